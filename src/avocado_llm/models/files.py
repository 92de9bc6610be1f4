"""The files that decide a model's answers, and their hash: the model's revision in records."""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILES = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.model", "*.tiktoken", "*.jinja",
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "chat_template.json", "*.index.json",
)  # fmt: skip
"""What decides a model directory's answers: weights (every format), configs, tokenizer files
and chat templates. Code files are not in it: they are never run (``trust_remote_code=False``)."""


def model_files(path: Path) -> list[Path]:
    """The files of :data:`MODEL_FILES` in a model directory (or the file itself), sorted."""
    if path.is_file():
        return [path]
    found = {f for pattern in MODEL_FILES for f in path.glob(pattern) if f.is_file()}
    return sorted(found)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def weights_revision(path: Path, chat_template: str | None = None) -> str:
    """A short hash of every file that decides the model's answers (names and bytes), and of a
    chat template that replaces the tokenizer's: the model's revision in every record (and so
    in every record key)."""
    digest = hashlib.sha256()
    for file in model_files(path):
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    if chat_template is not None:
        digest.update(b"chat_template\0" + chat_template.encode())
    return "sha256:" + digest.hexdigest()[:16]
