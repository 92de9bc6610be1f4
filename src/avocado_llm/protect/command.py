"""``avocado watermark detect | suspect``: is this text (or this model) Avocado's, and whose?

    AVOCADO_SECRET=... avocado watermark detect answers.jsonl --model runs/tiny/student \\
        --by-account --database-url sqlite:///avocado.db
    AVOCADO_SECRET=... avocado watermark suspect --url http://host/v1 --api-key-env SUSPECT_KEY \\
        --model-dir runs/tiny/student --accounts 1,2,3
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avocado_llm.config.cli import EXIT_USAGE, add_command, fail

if TYPE_CHECKING:  # torch loads only when a watermark command runs, not for every `avocado`
    from avocado_llm.protect.detect import Answer, Attribution, Detector
    from avocado_llm.protect.scheme import Score, WatermarkParams


HELP = "detect Avocado's keyed watermark in text or in a suspect model"
DESCRIPTION = """\
The API's answers carry a watermark keyed by the server secret and the account. `detect` scores
text; `suspect` asks a model through its OpenAI-compatible API and tests whether it was
distilled from Avocado. The secret comes from AVOCADO_SECRET (or --secret-env VAR).
"""


def add_watermark_command(commands: Any) -> None:
    """Register ``watermark`` on the ``avocado`` parser's subcommands."""
    p = add_command(commands, "watermark", run_watermark_command, HELP, DESCRIPTION)
    sub = p.add_subparsers(dest="watermark_command", required=True, metavar="<cmd>")

    d = sub.add_parser(
        "detect",
        help="score a file of answers (plain text lines or JSONL)",
        description="Score answers for the watermark: distinct (context, token) pairs, green "
        "pairs, z-score and the exact binomial p-value. JSONL lines may carry `messages` or "
        "`prompt`: then only the positions where the model hesitates are scored (stronger).",
    )
    d.add_argument("file", type=Path, metavar="FILE", help="answers: text lines or JSONL")
    _common(d)

    s = sub.add_parser(
        "suspect",
        help="ask a suspect model tiny-world prompts and test its answers for the watermark",
        description="Closed-model radioactivity check: ask the suspect, through its "
        "OpenAI-compatible API at temperature 0, the prompts the served model hesitates on, "
        "then run two tests under every candidate account's key (Bonferroni-corrected): the "
        "reference test (does it repeat the answers that account's watermark changed, more "
        "than a random key's? exact Monte Carlo p; the verdict) and the text test (green "
        "share of de-duplicated (context, token) pairs, Sander et al. 2024; exact binomial p).",
    )
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the suspect's OpenAI-compatible base URL (/v1)")
    where.add_argument(
        "--answers",
        type=Path,
        metavar="FILE",
        help="test answers saved before (--save: JSONL with each answer's `messages`) instead "
        "of asking: the same tests again, e.g. under another ledger",
    )
    s.add_argument("--api-key-env", metavar="VAR", help="environment variable with its API key")
    s.add_argument("--suspect-model", metavar="NAME", help="model to ask [its first listed]")
    s.add_argument(
        "--prompts",
        type=int,
        default=4000,
        metavar="N",
        help="candidate tiny-world prompts per family [4000]; the served model picks the ones "
        "it hesitates on (where its answers carry the mark)",
    )
    s.add_argument(
        "--recipe",
        type=Path,
        metavar="RECIPE",
        help="ask the recipe's own prompts instead: every prompt of its data.sources (both "
        "splits) and --prompts of each of its tiny-world families",
    )
    s.add_argument(
        "--prompts-file",
        type=Path,
        action="append",
        metavar="FILE",
        help="ask these prompts instead (repeatable): JSONL, JSON, CSV/TSV, Parquet or a "
        "datasets directory with a `messages` (chat) or `prompt` (text) column",
    )
    s.add_argument(
        "--prompt-column",
        metavar="NAME",
        help="the column of --prompts-file holding the prompt [messages, else prompt]",
    )
    s.add_argument(
        "--max-prompts", type=int, default=3000, metavar="N", help="ask at most N of them [3000]"
    )
    s.add_argument(
        "--ask-all",
        action="store_true",
        help="ask every candidate (no choice by the served model's hesitation)",
    )
    s.add_argument("--save", type=Path, metavar="FILE", help="write the answers here (JSONL)")
    s.add_argument(
        "--delta",
        type=float,
        metavar="D",
        help="the watermark strength the accounts were served with, for the reference test "
        "[the default plan's]",
    )
    s.add_argument(
        "--random-keys",
        type=int,
        default=20_000,
        metavar="N",
        help="random keys of the reference test's Monte Carlo null [20000: p resolves 5e-5]",
    )
    _common(s, model_flag="--model-dir")
    s.set_defaults(by_account=True)


def _common(p: argparse.ArgumentParser, model_flag: str = "--model") -> None:
    p.add_argument(
        model_flag,
        dest="model",
        type=Path,
        required=True,
        metavar="DIR",
        help="the served model's directory (its tokenizer; its weights for gating)",
    )
    who = p.add_argument_group("whose key")
    who.add_argument("--account", type=int, metavar="ID", help="test this account's key")
    if p.prog.split()[-1] == "detect":
        who.add_argument(
            "--by-account",
            action="store_true",
            help="find the account whose key explains the text best",
        )
    who.add_argument("--accounts", metavar="IDS", help="candidate account ids, comma-separated")
    who.add_argument(
        "--database-url",
        metavar="URL",
        help="take the candidates from this ledger [AVOCADO_DATABASE_URL]",
    )
    who.add_argument(
        "--secret-env",
        default="AVOCADO_SECRET",
        metavar="VAR",
        help="variable holding the server secret [AVOCADO_SECRET]",
    )
    scheme = p.add_argument_group("scheme (must match the server's)")
    scheme.add_argument("--gamma", type=float, help="green share [the scheme's default]")
    scheme.add_argument("--context", type=int, help="tokens hashed [the scheme's default]")
    scheme.add_argument("--min-entropy", type=float, help="entropy gate [the scheme's]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run_watermark_command(args: argparse.Namespace) -> int:
    from avocado_llm.protect.detect import Detector, read_answers
    from avocado_llm.protect.scheme import DEFAULT_PARAMS, WatermarkParams

    secret = os.environ.get(args.secret_env, "")
    if not secret:
        return fail(f"set {args.secret_env} (the server secret the keys derive from)", EXIT_USAGE)
    if args.account is None and not args.by_account:
        return fail("name the account (--account ID) or use --by-account", EXIT_USAGE)
    try:
        accounts = [args.account] if args.account is not None else candidate_accounts(args)
        params = WatermarkParams(
            DEFAULT_PARAMS.gamma if args.gamma is None else args.gamma,
            DEFAULT_PARAMS.context if args.context is None else args.context,
            DEFAULT_PARAMS.min_entropy if args.min_entropy is None else args.min_entropy,
        )
    except ValueError as e:
        return fail(e, EXIT_USAGE)
    if args.watermark_command == "detect" and not args.file.is_file():
        return fail(f"no file {args.file}", EXIT_USAGE)
    if not (args.model / "config.json").is_file():
        return fail(f"no model in {args.model} (no config.json)", EXIT_USAGE)
    detector = Detector.from_model_dir(args.model, params, min_entropy=params.min_entropy)
    if args.watermark_command == "detect":
        answers = read_answers(args.file)
        extra: dict[str, Any] = {"file": str(args.file)}
    else:
        got = suspect_answers(args, detector)
        if isinstance(got, int):
            return got
        answers, extra = got
    result = attribute(detector, answers, secret, accounts)
    report = {**extra, "answers": len(answers), **result_json(result, params)}
    if args.watermark_command == "suspect" and detector.gate is not None:
        report["reference"] = reference_json(args, detector, answers, secret, accounts, params)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def suspect_answers(
    args: argparse.Namespace, detector: Detector
) -> tuple[list[Answer], dict[str, Any]] | int:
    """The suspect's answers, asked now (``--url``: the prompts our model hesitates on) or read
    back from a file ``--save`` wrote (``--answers``); an exit code after a usage error."""
    from avocado_llm.protect.detect import read_answers
    from avocado_llm.protect.suspect import ask_suspect, choose_prompts

    if args.answers is not None:
        if not args.answers.is_file():
            return fail(f"no file {args.answers}", EXIT_USAGE)
        saved = read_answers(args.answers)
        if not saved or any(a.messages is None for a in saved):
            why = "every line needs its prompt (`messages` or `prompt`) beside the answer"
            return fail(f"{args.answers}: {why}, as --save writes them", EXIT_USAGE)
        return saved, {"answers_file": str(args.answers)}
    prompts = candidate_prompts(args)
    if prompts is None:
        return EXIT_USAGE
    candidates = len(prompts)
    if detector.gate is not None and not args.ask_all:
        prompts = choose_prompts(detector.gate, prompts, args.max_prompts)
    else:
        prompts = prompts[: args.max_prompts]
    if not prompts:
        return fail(
            "the served model hesitates on none of the candidate prompts: "
            "raise --prompts or use --ask-all",
            EXIT_USAGE,
        )
    got = ask_suspect(args.url, args.api_key_env, prompts, model=args.suspect_model)
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"messages": a.messages, "text": a.text}) for a in got.answers]
        args.save.write_text("".join(line + "\n" for line in lines))
    return got.answers, {"url": args.url, "model": got.model, "candidate_prompts": candidates}


def candidate_prompts(args: argparse.Namespace) -> list[list[dict[str, str]]] | None:
    """The prompts ``suspect`` may ask: a recipe's, files', or the tiny world's; ``None``
    after printing why they cannot be read."""
    from avocado_llm.config import load_recipe_or_report
    from avocado_llm.data.sources import DataError
    from avocado_llm.protect.suspect import (
        file_source,
        recipe_prompts,
        source_prompts,
        suspect_prompts,
    )

    if args.prompt_column and not args.prompts_file:
        fail("--prompt-column needs --prompts-file", EXIT_USAGE)
        return None
    if args.recipe is None and not args.prompts_file:
        return suspect_prompts(args.prompts)
    prompts: list[list[dict[str, str]]] = []
    try:
        if args.recipe is not None:
            recipe = load_recipe_or_report(args.recipe)
            if recipe is None:
                return None
            prompts += recipe_prompts(recipe, args.prompts)
        for path in args.prompts_file or []:
            prompts += source_prompts([file_source(path, args.prompt_column)])
    except DataError as error:
        fail(str(error), EXIT_USAGE)
        return None
    return prompts


def reference_json(
    args: argparse.Namespace,
    detector: Detector,
    answers: list[Answer],
    secret: str,
    accounts: list[int],
    params: WatermarkParams,
) -> dict[str, Any]:
    """The reference test (``protect.reference``): does the suspect repeat the answers each
    account's watermark changed, more often than it repeats a random key's changes?"""
    from avocado_llm.protect.reference import flip_table, reference_test
    from avocado_llm.protect.scheme import DEFAULT_DELTA, account_key

    gate = detector.gate
    assert gate is not None
    delta = DEFAULT_DELTA if args.delta is None else args.delta
    prompts = [a.messages or [] for a in answers]
    table = flip_table(gate, prompts, delta, params)
    suspect = [detector.token_ids(a.text) for a in answers]
    keys = [account_key(secret, a) for a in accounts]
    result = reference_test(table, suspect, keys, random_keys=args.random_keys)
    rows = sorted(
        zip(accounts, result.account_scores, result.p_values, strict=True),
        key=lambda r: (r[2], -r[1].rate),
    )
    account, best, p = rows[0]
    return {
        "delta": delta,
        "account": account,
        "flipped": best.flipped,
        "followed": best.followed,
        "rate": round(best.rate, 4),
        "null_rate": round(result.null_rate, 4),
        "random_keys": result.random_keys,
        "p_value": p,
        "p_value_corrected": min(1.0, p * len(accounts)),
        "by_account": [
            {"account": a, "flipped": s.flipped, "followed": s.followed, "p_value": q}
            for a, s, q in rows
        ],
    }


def attribute(
    detector: Detector, answers: list[Answer], secret: str, accounts: list[int]
) -> Attribution:
    """Score the answers under each candidate account (prompts used when every answer has
    one; otherwise every position is scored)."""
    texts = [a.text for a in answers]
    prompts = [a.messages for a in answers]
    have_prompts = bool(answers) and all(p is not None for p in prompts)
    return detector.by_account(texts, secret, accounts, prompts if have_prompts else None)  # type: ignore[arg-type]


def candidate_accounts(args: argparse.Namespace) -> list[int]:
    """``--accounts``, or every account of the ledger."""
    if args.accounts:
        try:
            return [int(a) for a in args.accounts.split(",") if a.strip()]
        except ValueError:
            raise ValueError(
                f"--accounts takes account ids (1,2,3), not {args.accounts!r}"
            ) from None
    url = args.database_url or os.environ.get("AVOCADO_DATABASE_URL")
    if not url:
        raise ValueError("give the candidates: --accounts IDS or --database-url URL")
    return ledger_accounts(url)


def ledger_accounts(database_url: str) -> list[int]:
    """Every account id in the ledger."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(text("SELECT id FROM accounts ORDER BY id"))]
    finally:
        engine.dispose()


def score_json(score: Score) -> dict[str, Any]:
    return {
        "scored_tokens": score.scored,
        "green": score.green,
        "green_fraction": round(score.green_fraction, 4),
        "z": round(score.z, 3),
        "p_value": score.p_value,
        "tokens": score.tokens,
    }


def result_json(result: Attribution, params: WatermarkParams) -> dict[str, Any]:
    best = result.best
    return {
        "scheme": {
            "gamma": params.gamma,
            "context": params.context,
            "min_entropy": params.min_entropy,
        },
        "account": best.account,
        **score_json(best.score),
        "accounts_tested": len(result.scores),
        "p_value_corrected": result.corrected_p,
        "by_account": [{"account": s.account, **score_json(s.score)} for s in result.scores],
    }


def print_report(r: dict[str, Any]) -> None:
    where = r.get("file") or r.get("answers_file") or f"{r.get('url')} ({r.get('model')})"
    print(f"{where}: {r['answers']} answers, {r['tokens']} tokens")
    print(f"  scored tokens (distinct (context, token) pairs): {r['scored_tokens']}")
    print(f"  green: {r['green']} ({r['green_fraction']:.1%}; chance {r['scheme']['gamma']:.0%})")
    print(f"  z-score: {r['z']:.2f}")
    print(f"  p-value (exact binomial): {r['p_value']:.3g}")
    if r["accounts_tested"] > 1:
        print(
            f"  best account: {r['account']} of {r['accounts_tested']} tested; "
            f"p-value corrected for them: {r['p_value_corrected']:.3g}"
        )
        for s in r["by_account"][:5]:
            print(
                f"    account {s['account']}: {s['green']}/{s['scored_tokens']} green, "
                f"p={s['p_value']:.3g}"
            )
    else:
        print(f"  account: {r['account']}")
    ref = r.get("reference")
    if ref is not None:
        print(
            f"  reference test: the suspect follows {ref['followed']} of the {ref['flipped']} "
            f"answers account {ref['account']}'s watermark changed ({ref['rate']:.1%}; "
            f"{ref['null_rate']:.1%} for a random key); p = {ref['p_value']:.3g} "
            f"(Monte Carlo, {ref['random_keys']} keys), corrected for "
            f"{r['accounts_tested']} accounts: {ref['p_value_corrected']:.3g}"
        )
    p = ref["p_value_corrected"] if ref is not None else r["p_value_corrected"]
    test = "reference test" if ref is not None else "text test"
    print(
        "  verdict: "
        + ("WATERMARKED" if p < 1e-3 else "no evidence of the watermark")
        + f" ({test}, threshold p < 1e-3)"
    )


__all__ = ["add_watermark_command", "run_watermark_command"]
