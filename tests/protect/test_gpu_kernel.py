"""The GPU's watermark kernel (Triton, ``protect/gpu_kernel.py``) against the tensor path, bit
for bit, on the CPU: in a child process under Triton's interpreter (``TRITON_INTERPRET=1``,
which runs the kernel's code with numpy; it is chosen when the kernels are defined, at import).
On a CUDA device ``make test-gpu`` runs the compiled kernel (``test_kernel.py``, marker gpu)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

CASES = 19


def test_the_triton_kernel_biases_what_the_tensor_path_biases() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, str(Path(__file__))],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{CASES} cases, all the same" in out.stdout, out.stdout


def check() -> None:
    """Every case: the Triton state and the tensor state over the same steps (rows leaving
    after the second), compared step by step; each with rows the watermark changed."""
    from test_kernel import changed_rows, hesitant_logits, same

    from avocado_llm.protect import gpu_kernel
    from avocado_llm.protect.marking import WatermarkState
    from avocado_llm.protect.scheme import Watermark, WatermarkParams, account_key

    assert gpu_kernel.triton is not None, "triton is a dev dependency (pyproject.toml)"
    cpu = torch.device("cpu")

    def run(marks: list, temperatures: list[float], logits: torch.Tensor, triton: bool) -> list:
        gen = torch.Generator().manual_seed(logits.shape[-1])
        tokens = torch.randint(0, logits.shape[-1], logits.shape[:2], generator=gen)
        if triton:
            state = gpu_kernel.TritonState(marks, cpu, temperatures)
        else:
            state = WatermarkState(marks, cpu, temperatures)
        rows = torch.arange(logits.shape[1])
        out = []
        for step in range(logits.shape[0]):
            out.append(state.apply(logits[step, rows].clone()))
            state.advance(tokens[step, rows])
            if step == 1 and len(rows) > 4:
                keep = torch.tensor([i for i in range(len(rows)) if i not in (1, 4)])
                state.select(keep)
                rows = rows[keep]
        return out

    cases = []
    temps = {"greedy": [0.0] * 16, "sampled": [0.8] * 16, "mixed": [0.0, 1.0] * 8}
    for vocab in (500, 5000):  # the whole row in one block / top 64 and a pass in blocks
        for min_entropy in (0.0, 0.8):
            marks: list = [
                Watermark(
                    account_key("t", i), 2.0 + i % 3, WatermarkParams(min_entropy=min_entropy)
                )
                for i in range(16)
            ]
            marks[5] = None
            for name, t in temps.items():
                cases.append((f"{vocab}/{min_entropy}/{name}", marks, t, hesitant_logits(
                    4, 16, vocab, seed=vocab), True))  # fmt: skip
    widths = [  # rows of h = 1, 2, 3 in one batch; masked tokens (-inf)
        Watermark(account_key("w", i), 3.0, WatermarkParams(context=1 + i % 3, min_entropy=0.5))
        for i in range(12)
    ]
    masked = hesitant_logits(4, 12, 300, seed=9)
    masked[:, :, 200:] = float("-inf")
    for name in ("greedy", "sampled"):
        cases.append((f"widths/{name}", widths, temps[name][:12], masked, True))
    ties = hesitant_logits(3, 16, 400, seed=4)
    ties[:, 8] = 0.0  # every token tied
    ties[:, 9, 10:20] = 50.0  # ten tied at the top
    tied = [
        Watermark(account_key("p", i), 2.0, WatermarkParams(min_entropy=0.3)) for i in range(16)
    ]
    for name in ("greedy", "sampled"):
        cases.append((f"ties/{name}", tied, temps[name], ties, True))
    for vocab in (1, 2, 3):  # vocabularies too small for a top two
        tiny = [
            Watermark(account_key("s", i), 2.0, WatermarkParams(min_entropy=0.0)) for i in range(4)
        ]
        logits = torch.randn(3, 4, vocab, generator=torch.Generator().manual_seed(vocab))
        cases.append((f"vocab {vocab}", tiny, [0.0] * 4, logits, vocab > 1))
    assert len(cases) == CASES
    for name, marks, t, logits, moves in cases:
        ours, theirs = run(marks, t, logits, True), run(marks, t, logits, False)
        assert same(ours, theirs), name
        assert not moves or changed_rows(ours, logits) >= 3, name  # the watermark was at work
    empty = gpu_kernel.TritonState([Watermark(1)], cpu, [0.0])
    empty.select(torch.tensor([], dtype=torch.long))
    assert empty.apply(torch.zeros(0, 50)).shape == (0, 50)
    print(f"{len(cases)} cases, all the same")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    check()
