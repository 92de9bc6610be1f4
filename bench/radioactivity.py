"""The watermark, proved on the tiny world — one command:

    python bench/radioactivity.py            # → runs/watermark/radioactivity/results.json

1. **Serve** the student (``runs/tiny/student``, else the zoo's ``qwen-tiny``) behind the real
   metered API on loopback, with a ledger of four accounts; answers are watermarked with each
   account's key (the default plan).
2. **Quality**: held-out accuracy (greedy, every family) through the API with the watermark on
   (default plan) and off (a plan with ``watermark: 0``), on the same prompts.
3. **Detection**: watermarked answers (the held-out ones, plus answers to the prompts among
   ``--pool-extra`` per family and split that the served model hesitates on) pooled in random
   order until 200 scored (distinct, gated) tokens, or all of them when they hold fewer (a
   confident model: few gated positions): exact p-value, and which account the text is
   attributed to (``avocado watermark detect --by-account``).
4. **Radioactivity** (once per seed, ``--seeds N``): student **B** is distilled with
   Avocado's own harvest, using the watermarked API as an OpenAI-compatible endpoint teacher
   (the ``rival`` account's key), from ≥ 2,000 answers; student **C** the same way from the
   three zoo teachers directly (the same prompts, fusion and training). Each is then served
   behind its own API (another ledger and secret, no watermark of its own), and
   ``avocado watermark suspect`` asks it the prompts our model hesitates on and runs its two
   tests under every account of our ledger (Bonferroni-corrected): the reference test (the
   verdict) and the text test.

``--upstream URL --model DIR`` serves our model with vLLM instead of the in-process engine:
the gateway (Avocado's app in upstream mode, the same ledger and keys) forwards to vLLM at
``URL`` (``…/v1``), started with ``--logits-processors
avocado_watermark.vllm:WatermarkLogitsProcessor`` on ``DIR`` (the same model: its tokenizer
and entropy gate score the answers here); quality, detection and student B's harvest all go
through it. The bench checks first that vLLM runs the processor (the gateway's probe).

Tiny students, short training, one torch thread: about 10–20 minutes on 2 shared cores, and
as much again for each further seed. ``--prompts-per-family`` and ``--steps`` scale it.

One run is not a result: ``--seeds N`` distills B and C under recipe seeds 1…N (each seed its own
prompt draw, initialisation and data order; the served model, its ledger and the detection stay
the same) and reports every seed's p-values for B and C and their spread (min, median, max);
the verdict is the spread, not the best seed. Seed 1 is the single run's layout (``student-b``,
``student-c``), so a one-seed run's students are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

from radioactivity_parts import (
    ACCOUNTS,
    MODEL_NAME,
    POOL_SEED,
    ROOT,
    SECRET,
    check_upstream,
    data_sizes,
    distill_student,
    endpoint_accuracy,
    hesitant,
    ledger,
    log,
    pooled_detection,
    recipe_for,
    robustness,
    serving,
    suspect_check,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/watermark/radioactivity")
    parser.add_argument("--model", type=Path, help="student to serve [runs/tiny/student]")
    parser.add_argument("--heldout", type=int, default=300, help="held-out prompts per family")
    parser.add_argument(
        "--prompts-per-family",
        type=int,
        default=5000,
        help="harvest prompts per family for B and C [5000: ~20,000 answers; arithmetic, "
        "facts and units have fewer train prompts, and the distiller asks them all]",
    )
    parser.add_argument(
        "--pool-extra",
        type=int,
        default=10000,
        help="candidate prompts per family and split (train, and held-out beyond the quality "
        "set) for the detection pool; the ones the served model hesitates on are asked [10000]",
    )
    parser.add_argument("--steps", type=int, default=10000, help="training steps of B and C")
    parser.add_argument(
        "--student-hidden", type=int, default=64, help="hidden size of B and C [64: schema default]"
    )
    parser.add_argument(
        "--student-layers", type=int, default=2, help="layers of B and C [2: schema default]"
    )
    parser.add_argument(
        "--fusion",
        default="vote",
        help="fusion strategy of B and C [vote: a distiller has no gold answers; `verify` "
        "drops the answers the watermark made wrong]",
    )
    parser.add_argument(
        "--suspect-prompts",
        type=int,
        default=4000,
        help="candidate prompts per family of the suspect check (it asks the hesitant ones)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="distill B and C under recipe seeds 1..N and report every seed's p-values and "
        "their spread [1]",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete --out's earlier results first (the served model is only read: copied "
        "to --out/served)",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="serve our model with vLLM at URL (…/v1, with Avocado's watermark processor) "
        "behind the gateway, instead of the in-process engine; needs --model (the same model)",
    )
    parser.add_argument(
        "--upstream-model", metavar="NAME", help="the model's name in vLLM [its first model]"
    )
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    upstream = None
    if args.upstream_model and not args.upstream:
        parser.error("--upstream-model needs --upstream URL")
    if args.upstream:
        if not args.upstream.startswith(("http://", "https://")):
            parser.error(f"--upstream must be an http(s) URL ending in /v1, not {args.upstream!r}")
        if args.model is None or not (args.model / "config.json").is_file():
            parser.error(
                "--upstream needs --model DIR: the model vLLM serves (a directory with "
                "config.json; its tokenizer and entropy gate score the answers)"
            )
        upstream = (args.upstream, check_upstream(args.upstream, args.upstream_model))
    seeds = list(range(1, args.seeds + 1))
    torch.set_num_threads(1)
    t_start = time.monotonic()
    from avocado_llm.protect.scheme import DEFAULT_DELTA, DEFAULT_PARAMS
    from avocado_llm.world.tasks import FAMILIES, generate

    out: Path = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    source = args.model or ROOT / "runs/tiny/student"
    if upstream is None and not any(source.glob("*.safetensors")):  # missing, or being rebuilt
        log(
            f"no trained model in {source}: serving the zoo's qwen-tiny instead (a confident "
            "model: the entropy gate leaves it little to mark)"
        )
        source = ROOT / "zoo/qwen-tiny"
    served = out / "served"
    if not (served / "config.json").exists():  # a frozen copy: runs/tiny may be rebuilt meanwhile
        shutil.copytree(source, served, ignore=shutil.ignore_patterns("checkpoints"))
    log(
        f"served model: {source} (copied to {served}); scheme {DEFAULT_PARAMS}, "
        f"delta {DEFAULT_DELTA}"
    )
    database_url, keys = ledger(out / "ledger.db", SECRET, ACCOUNTS)
    results: dict[str, Any] = {
        "served_model": str(source),
        "served_by": f"vLLM at {upstream[0]} ({upstream[1]})" if upstream else "in-process",
        "scheme": vars(DEFAULT_PARAMS) | {"delta": DEFAULT_DELTA},
        "accounts": {n: k["id"] for n, k in keys.items()},
    }
    heldout = generate(list(FAMILIES), "heldout", args.heldout, seed=0)

    with serving(served, database_url, SECRET, upstream) as url:
        log(f"Avocado API on {url}" + (f", in front of vLLM at {upstream[0]}" if upstream else ""))
        # 1. quality: the same held-out prompts with the watermark on (acme) and off
        on = endpoint_accuracy(url, keys["acme"]["on"], heldout, out / "answers-on.jsonl")
        off = endpoint_accuracy(url, keys["acme"]["off"], heldout, None)
        changed = sum(a != b for a, b in zip(on["answers"], off["answers"], strict=True))
        results["quality"] = {
            "heldout": len(heldout),
            "accuracy_on": on["overall"],
            "accuracy_off": off["overall"],
            "cost_points": round(100 * (off["overall"] - on["overall"]), 2),
            "families_on": on["families"],
            "families_off": off["families"],
            "answers_changed": changed,
        }
        log(
            f"quality: off {off['overall']:.2%}, on {on['overall']:.2%} "
            f"({changed} of {len(heldout)} answers differ)"
        )
        # 2. detection: pooled to 200 scored tokens, attributed to the account. A confident
        # model leaves few positions open to the gate (a few in a hundred answers), so the
        # pool is the held-out answers plus more answers of the same account to other prompts
        pool = (out / "answers-on.jsonl").read_text()
        if args.pool_extra:
            asked = {e.id for e in heldout}
            candidates = generate(list(FAMILIES), "train", args.pool_extra, seed=POOL_SEED)
            candidates += [
                e
                for e in generate(list(FAMILIES), "heldout", args.pool_extra, seed=POOL_SEED)
                if e.id not in asked
            ]
            extra = hesitant(served, candidates)
            log(f"detection pool: {len(extra)} more prompts the served model hesitates on")
            endpoint_accuracy(url, keys["acme"]["on"], extra, out / "answers-extra.jsonl")
            pool += (out / "answers-extra.jsonl").read_text()
        (out / "answers-pool.jsonl").write_text(pool)
        det = pooled_detection(
            out / "answers-pool.jsonl", served, out / "pool-200.jsonl", database_url, 200
        )
        results["detection"] = {k: det[k] for k in KEYS_KEPT}
        log(
            f"detection: {det['answers']} answers, {det['scored_tokens']} scored tokens, "
            f"p = {det['p_value']:.3g}, attributed to account {det['account']} "
            f"(acme is {keys['acme']['id']})"
        )
        results["robustness"] = robustness(out / "answers-on.jsonl", served, keys["acme"]["id"])
        log(f"robustness: {json.dumps(results['robustness'])}")
        # 3. student B: Avocado's harvest with the watermarked API as an endpoint teacher
        os.environ["RIVAL_API_KEY"] = keys["rival"]["on"]
        api_teacher = {
            "name": "avocado-api",
            "kind": "openai",
            "base_url": url,
            "model": MODEL_NAME,
            "api_key_env": "RIVAL_API_KEY",
            "supports_logprobs": False,
            "max_concurrency": 16,
            "licence": "Avocado API terms",
        }
        b_recipes = {}
        for seed in seeds:
            log(f"student B (seed {seed}): distilling the watermarked API")
            b_recipes[seed] = recipe_for(run_name("b", seed), out, [api_teacher], args, seed=seed)
            distill_student(b_recipes[seed])
    # 4. per seed: student C the same way, from the zoo teachers directly; then the
    # radioactivity check of that seed's B and C through their APIs (results.json is written
    # after each seed, so a long run that is stopped keeps the seeds it finished)
    zoo = [
        {"name": n, "zoo": True, "licence": "Apache-2.0"}
        for n in ("gemma-tiny", "gpt-oss-tiny", "qwen-tiny")
    ]
    per_seed: list[dict[str, Any]] = []
    results["rival_account"] = keys["rival"]["id"]
    for seed in seeds:
        log(f"student C (seed {seed}): distilling the zoo teachers")
        c_recipe = recipe_for(run_name("c", seed), out, zoo, args, seed=seed)
        distill_student(c_recipe)
        entry: dict[str, Any] = {"seed": seed}
        for name, recipe in (("B", b_recipes[seed]), ("C", c_recipe)):
            entry[f"student_{name}"] = suspect(name, seed, recipe, served, database_url, args)
        per_seed.append(entry)
        results["seeds"] = per_seed
        results["spread"] = {name: spread(per_seed, name) for name in ("B", "C")}
        results["minutes"] = round((time.monotonic() - t_start) / 60, 1)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    # the first seed's students where the single run put them (earlier readers of results.json)
    results["student_B"], results["student_C"] = per_seed[0]["student_B"], per_seed[0]["student_C"]
    results["minutes"] = round((time.monotonic() - t_start) / 60, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary(results)
    print(f"{results['minutes']} min; {out / 'results.json'}")
    return 0


KEYS_KEPT = (
    "answers",
    "scored_tokens",
    "green",
    "green_fraction",
    "p_value",
    "account",
    "p_value_corrected",
)


def summary(results: dict[str, Any]) -> None:
    """The verdict lines: quality, detection, each seed's B and C (reference test, corrected
    p; ``≤`` where no random key did as well: the test's resolution) and their spread."""
    q, d, n = results["quality"], results["detection"], len(results["seeds"])
    print()
    print(
        f"quality   held-out accuracy off {q['accuracy_off']:.2%}  on {q['accuracy_on']:.2%}  "
        f"cost {q['cost_points']:+.2f} points   (target ≤ 1)"
    )
    print(
        f"detection {d['scored_tokens']} scored tokens  p = {d['p_value']:.3g}  account "
        f"{d['account']}   (target p < 1e-6)"
    )
    for entry in results["seeds"]:
        bb = entry["student_B"]["reference_test"]
        cc = entry["student_C"]["reference_test"]
        print(
            f"seed {entry['seed']}  student B p {reference_p(bb)} (reference test; account "
            f"{bb['account']}; rival is {results['rival_account']}; target < 1e-3)  "
            f"student C p {reference_p(cc)} (target > 0.05)"
        )
    for name, target in (("B", "< 1e-3"), ("C", "> 0.05")):
        s = results["spread"][name]["reference_test"]
        print(
            f"student {name} over {n} seed(s): reference-test corrected p min {s['min']:.3g}  "
            f"median {s['median']:.3g}  max {s['max']:.3g}  (target {target}; "
            f"{s['on_target']} of {n} seeds on target)"
        )


def reference_p(test: dict[str, Any]) -> str:
    """``= p``, or ``≤ p (no random key of N did as well)`` at the Monte Carlo floor."""
    corrected = f"{test['p_value_corrected']:.3g}"
    if test["p_value"] * (test["random_keys"] + 1) > 1.5:
        return f"= {corrected}"
    return f"≤ {corrected} (no random key of {test['random_keys']:,} did as well)"


def suspect(
    name: str, seed: int, recipe: Any, served: Path, database_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Serve student ``name`` of ``seed`` and run the suspect check on it (both tests)."""
    student = recipe.run_dir / "student"
    log(f"suspect {name} (seed {seed}): serving {student} and asking it")
    r = suspect_check(student, served, database_url, student.parent, args.suspect_prompts)
    ref = r["reference"]
    log(
        f"suspect {name} (seed {seed}): text test {r['scored_tokens']} scored tokens, "
        f"green {r['green_fraction']:.2%}, best account {r['account']}, corrected p "
        f"{r['p_value_corrected']:.3g}; reference test: follows {ref['followed']} of "
        f"{ref['flipped']} changes of account {ref['account']} ({ref['rate']:.1%}, "
        f"random keys {ref['null_rate']:.1%}), corrected p {ref['p_value_corrected']:.3g}"
    )
    return {"text_test": {k: r[k] for k in KEYS_KEPT}, "reference_test": ref} | data_sizes(recipe)


def run_name(student: str, seed: int) -> str:
    """Seed 1 keeps the single run's directory (its students are reused)."""
    return f"student-{student}" if seed == 1 else f"student-{student}-seed{seed}"


def spread(per_seed: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Min, median and max over the seeds of student ``name``'s corrected p-values (both
    tests), and how many seeds meet the target (B: < 1e-3, C: > 0.05)."""
    out: dict[str, Any] = {}
    for test in ("reference_test", "text_test"):
        values = sorted(float(e[f"student_{name}"][test]["p_value_corrected"]) for e in per_seed)
        hit = sum(v < 1e-3 if name == "B" else v > 0.05 for v in values)
        out[test] = {
            "p_values": [float(e[f"student_{name}"][test]["p_value_corrected"]) for e in per_seed],
            "min": values[0],
            "median": statistics.median(values),
            "max": values[-1],
            "on_target": hit,
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
