"""A command whose reader goes away (``avocado ... | head``) ends quietly, as CLI tools do: no
``BrokenPipeError`` traceback, no "Exception ignored" message at exit, and the exit status of a
process ended by SIGPIPE (141), which a shell's ``pipefail`` sees like ``yes | head``'s."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

AVOCADO = [sys.executable, "-m", "avocado_llm.cli"]
# Both print far more than a pipe holds (64 KiB), so the reader is gone before they finish.
COMMANDS = {
    "jsonl": ["tasks", "--format", "jsonl", "-n", "1000"],  # print()
    "table": ["tasks", "-n", "400"],  # a rich table
}
# A user's shell: stdout block-buffered into a pipe. (With PYTHONUNBUFFERED, as some CI sets,
# Python drops the rest of a partial write to a closed pipe without an error: exit 0.)
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
UNBUFFERED = {**BUFFERED, "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize(
    ("env", "statuses"), [(BUFFERED, {141}), (UNBUFFERED, {0, 141})], ids=["buffered", "unbuffered"]
)
def test_a_reader_that_goes_away_ends_the_command_quietly(
    name: str, env: dict[str, str], statuses: set[int]
) -> None:
    proc = subprocess.Popen(
        [*AVOCADO, *COMMANDS[name]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(os.read(proc.stdout.fileno(), 10)) == 10
    proc.stdout.close()  # the reader leaves, like head -c 10
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in statuses
    assert err == ""


def test_piped_into_head_prints_no_traceback() -> None:
    command = " ".join([*AVOCADO, *COMMANDS["jsonl"]]) + ' | head -c 10; echo " ${PIPESTATUS[0]}"'
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, env=BUFFERED
    )
    assert done.stderr == ""
    head, status = done.stdout.rsplit(" ", 1)
    assert head == '{"id": "ar'
    assert status.strip() == "141"
