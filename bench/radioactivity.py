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
4. **Radioactivity**: student **B** is distilled with Avocado's own harvest, using the
   watermarked API as an OpenAI-compatible endpoint teacher (the ``rival`` account's key), from
   ≥ 2,000 answers; student **C** the same way from the three zoo teachers directly (the same
   prompts, fusion and training). Each is then served behind its own API (another ledger and
   secret, no watermark of its own), and ``avocado watermark suspect`` asks it the prompts our
   model hesitates on and runs its two tests under every account of our ledger
   (Bonferroni-corrected): the reference test (the verdict) and the text test.

Tiny students, short training, one torch thread: about 10–20 minutes on 2 shared cores.
``--prompts-per-family`` and ``--steps`` scale it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    parser.add_argument("--fresh", action="store_true", help="delete earlier results first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t_start = time.monotonic()
    from avocado_llm.protect.scheme import DEFAULT_DELTA, DEFAULT_PARAMS
    from avocado_llm.world.tasks import FAMILIES, generate

    out: Path = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    source = args.model or ROOT / "runs/tiny/student"
    if not any(source.glob("*.safetensors")):  # missing, or being rebuilt right now
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
        "scheme": vars(DEFAULT_PARAMS) | {"delta": DEFAULT_DELTA},
        "accounts": {n: k["id"] for n, k in keys.items()},
    }
    heldout = generate(list(FAMILIES), "heldout", args.heldout, seed=0)

    with serving(served, database_url, SECRET) as url:
        log(f"Avocado API on {url}")
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
        results["detection"] = {
            k: det[k]
            for k in (
                "answers",
                "scored_tokens",
                "green",
                "green_fraction",
                "p_value",
                "account",
                "p_value_corrected",
            )
        }
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
        log("student B: distilling the watermarked API")
        b_recipe = recipe_for("student-b", out, [api_teacher], args)
        b = distill_student(b_recipe)
    # 4. student C: the same way, from the zoo teachers directly
    zoo = [
        {"name": n, "zoo": True, "licence": "Apache-2.0"}
        for n in ("gemma-tiny", "gpt-oss-tiny", "qwen-tiny")
    ]
    log("student C: distilling the zoo teachers")
    c_recipe = recipe_for("student-c", out, zoo, args)
    c = distill_student(c_recipe)
    sizes = {"B": data_sizes(b_recipe), "C": data_sizes(c_recipe)}
    # 5. the radioactivity check through their APIs
    for name, student in (("B", b), ("C", c)):
        log(f"suspect {name}: serving {student} and asking it")
        r = suspect_check(student, served, database_url, student.parent, args.suspect_prompts)
        keys_kept = (
            "answers",
            "scored_tokens",
            "green",
            "green_fraction",
            "p_value",
            "account",
            "p_value_corrected",
        )
        ref = r["reference"]
        results[f"student_{name}"] = {
            "text_test": {k: r[k] for k in keys_kept},
            "reference_test": ref,
        } | sizes[name]
        log(
            f"suspect {name}: text test {r['scored_tokens']} scored tokens, green "
            f"{r['green_fraction']:.2%}, best account {r['account']}, corrected p "
            f"{r['p_value_corrected']:.3g}; reference test: follows {ref['followed']} of "
            f"{ref['flipped']} changes of account {ref['account']} ({ref['rate']:.1%}, random "
            f"keys {ref['null_rate']:.1%}), corrected p {ref['p_value_corrected']:.3g}"
        )
    results["rival_account"] = keys["rival"]["id"]
    results["minutes"] = round((time.monotonic() - t_start) / 60, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    q, d = results["quality"], results["detection"]
    bb, cc = results["student_B"]["reference_test"], results["student_C"]["reference_test"]
    print()
    print(
        f"quality   held-out accuracy off {q['accuracy_off']:.2%}  on {q['accuracy_on']:.2%}  "
        f"cost {q['cost_points']:+.2f} points   (target ≤ 1)"
    )
    print(
        f"detection {d['scored_tokens']} scored tokens  p = {d['p_value']:.3g}  account "
        f"{d['account']}   (target p < 1e-6)"
    )
    print(
        f"student B p = {bb['p_value_corrected']:.3g} (reference test; account {bb['account']}; "
        f"rival is {results['rival_account']})   (target < 1e-3)"
    )
    print(f"student C p = {cc['p_value_corrected']:.3g} (reference test)   (target > 0.05)")
    print(f"{results['minutes']} min; {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
