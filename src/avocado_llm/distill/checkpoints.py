"""The distillation loop's files: resumable checkpoints and the per-step ``loss.jsonl``.

``checkpoints/step-NNNNNNN`` holds what ``accelerate`` saves (model, optimizer, scheduler, RNG
states); ``checkpoints/latest.json`` names the newest, written last and atomically, and may name
nothing but a folder beside it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from accelerate import Accelerator

from avocado_llm.harvest.files import append_bytes, atomic_write, clear_entry

CHECKPOINT_NAME = re.compile(r"step-\d{7}")
"""The only names ``checkpoints/latest.json`` may point at: a folder beside it."""

log = logging.getLogger("avocado.distill")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message says which and why."""


class LossLog:
    """``loss.jsonl``: one line per step; on resume, lines past the checkpoint are dropped."""

    def __init__(self, out_dir: Path | None, start: int, active: bool) -> None:
        path = self.path = (out_dir or Path()) / "loss.jsonl"
        self.active = active and out_dir is not None
        if self.active:
            kept = []
            if start > 0 and path.is_file() and not path.is_symlink():  # never read a link
                kept = [
                    ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] < start
                ]
            atomic_write(path, "".join(f"{ln}\n" for ln in kept).encode())

    def write(
        self, step: int, losses: dict[str, float], lr: float, metrics: dict[str, float]
    ) -> None:
        """One step's line: ``losses`` (loss, ce, kd, in that order), the rate, any metrics."""
        if not self.active:
            return
        row = {"step": step, **losses, "lr": lr, **metrics}
        append_bytes(self.path, (json.dumps(row) + "\n").encode())


def save_checkpoint(acc: Accelerator, out_dir: Path, step: int, keep: int = 0) -> None:
    """Write ``checkpoints/step-N`` then point ``checkpoints/latest`` at it (atomic rename);
    then delete all but the newest ``keep`` checkpoints (0 keeps them all)."""
    ckpt = out_dir / "checkpoints" / f"step-{step:07d}"
    if acc.is_main_process:  # a folder left by an earlier run, or a link: never write into it
        clear_entry(ckpt)
    acc.wait_for_everyone()
    acc.save_state(str(ckpt), safe_serialization=False)  # tied embeddings: no warning spam
    if acc.is_main_process:
        pointer = out_dir / "checkpoints" / "latest.json"
        atomic_write(pointer, json.dumps({"step": step, "path": ckpt.name}).encode())
        if keep > 0:
            prune_checkpoints(out_dir / "checkpoints", keep, ckpt.name)
    acc.wait_for_everyone()


def prune_checkpoints(folder: Path, keep: int, latest: str) -> list[str]:
    """Delete the ``step-N`` folders of ``folder`` but the newest ``keep`` (never ``latest``,
    the one ``latest.json`` names), after the pointer moved: a crash in between leaves one more,
    never fewer. A checkpoint is as big as the model and its optimizer state, three times the
    weights, so keeping every one fills a disk (a 67M student checkpointed every 25 steps:
    6 GB in 200 steps). Returns the names deleted."""
    steps = sorted(p.name for p in folder.iterdir() if CHECKPOINT_NAME.fullmatch(p.name))
    old = [name for name in steps[:-keep] if name != latest]
    for name in old:
        clear_entry(folder / name)
    return old


def load_checkpoint(acc: Accelerator, out_dir: Path) -> int:
    pointer = out_dir / "checkpoints" / "latest.json"
    if not pointer.exists():
        return 0
    latest = json.loads(pointer.read_text())
    name = latest.get("path") if isinstance(latest, dict) else None
    step = latest.get("step") if isinstance(latest, dict) else None
    # latest.json names a folder beside it, nothing else: never a path out of the run directory.
    if (
        not isinstance(name, str)
        or not CHECKPOINT_NAME.fullmatch(name)
        or type(step) is not int
        or step < 0
    ):
        raise CheckpointError(
            f"{pointer} points at {name!r} (step {step!r}); it must name a step-NNNNNNN folder "
            "in the same directory. Fix or delete latest.json, or start over with --force"
        )
    ckpt = out_dir / "checkpoints" / name
    if ckpt.is_symlink() or not ckpt.is_dir():
        raise CheckpointError(
            f"{pointer} points at {ckpt}, which is not a checkpoint folder (missing, or a link); "
            "fix or delete latest.json, or start over with --force"
        )
    acc.load_state(str(ckpt))
    _check_rng_state(acc, ckpt)
    return step


def _check_rng_state(acc: Accelerator, ckpt: Path) -> None:
    """``accelerate`` skips an RNG state it cannot load without a word; say so, by name."""
    from accelerate.utils import load

    rng = ckpt / f"random_states_{acc.process_index}.pkl"
    try:
        load(rng)  # weights-only, as accelerate loads it: a pickle with code is refused
    except Exception as error:  # any failure means the state was not restored
        log.warning(
            "checkpoint %s: the random state %s could not be loaded (%s); resumed without it, "
            "so this run will not match an uninterrupted one bit for bit",
            ckpt.name, rng, f"{type(error).__name__}: {error}".splitlines()[0][:300],
        )  # fmt: skip
