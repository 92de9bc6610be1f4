"""The life of an ``engine: vllm`` teacher's server process: started as the leader of its own
process group with its log and state file (:class:`VllmServer`), waited for until ``/health``
answers, stopped with its whole group (:func:`stop_group`); a server that another command
started is found from its state file (:func:`running_url`); SIGTERM / SIGHUP while servers are
up end the command after its servers (:func:`stop_on_signals`). The no-orphans rules are in the
module docstring of :mod:`~avocado_llm.teachers.vllm_server`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from avocado_llm.config import Recipe, TeacherConfig
from avocado_llm.teachers.vllm_spec import MODULE, ServerError, ServerSpec, spec_for, state_dir

STOP_GRACE_S = 30.0
LOG_TAIL_LINES = 20


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For ``preexec_fn``: SIGTERM this child when the process that started it dies. The libc
    function is looked up here, in the parent: the child, between fork and exec, only calls it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def arm() -> None:
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)

    return arm


class VllmServer:
    """A started server process (its own process group), its log and its state file."""

    def __init__(self, spec: ServerSpec, log_path: Path, state_path: Path) -> None:
        self.spec, self.log_path, self.state_path = spec, log_path, state_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def name(self) -> str:
        return self.spec.teacher.name

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} {' '.join(self.spec.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.spec.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.spec.environment(),
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        self.started_at = time.monotonic()
        state = {
            "teacher": self.name,
            "pid": self.process.pid,
            "base_url": self.spec.base_url,
            "model_dir": str(self.spec.model_dir),
            "command": self.spec.command()[1:],
            "log": str(self.log_path),
        }
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_path)

    def wait_healthy(self, timeout_s: float, poll_s: float = 0.5) -> float:
        """Seconds from the start until ``/health`` answered 200; a :class:`ServerError` with the
        log's last lines if the process ends first or ``timeout_s`` passes."""
        assert self.process is not None
        deadline = self.started_at + timeout_s
        url = self.spec.base_url.removesuffix("/v1") + "/health"
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    why = f"the vLLM server exited ({code}) before it was healthy"
                    raise ServerError(self.name, f"{why}; {self.log_path} ends:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return time.monotonic() - self.started_at
                if _stopping.is_set():
                    raise ServerError(self.name, "stopped by a signal while it started")
                if time.monotonic() > deadline:
                    why = (f"the vLLM server was not healthy within {timeout_s:g} s "
                           "(teachers[].vllm.start_timeout_s)")  # fmt: skip
                    raise ServerError(self.name, f"{why}; {self.log_path} ends:\n{self.log_tail()}")
                _stopping.wait(poll_s)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after ``grace_s``;
        waits for the server itself and removes its state file."""
        process = self.process
        if process is not None:
            stop_group(process.pid, grace_s, process)
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace_s: float, process: subprocess.Popen[Any] | None = None) -> None:
    """End process group ``pgid`` (SIGTERM, then SIGKILL after ``grace_s``), reaping
    ``process`` (its leader, when this process started it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process is not None:
            process.poll()
        if (process is None or process.returncode is not None) and not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if process is not None:
        process.wait()
    while _group_alive(pgid) and time.monotonic() < deadline + 10:
        time.sleep(0.05)


def read_state(recipe: Recipe, name: str) -> dict[str, Any] | None:
    """The state file of teacher ``name``'s server, if it is there and readable."""
    try:
        state = json.loads((state_dir(recipe) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def is_server(pid: int, port: int) -> bool:
    """Whether process ``pid`` is a vLLM server on ``port`` (not a recycled pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in argv]
    return MODULE in words and str(port) in words


def server_pid(recipe: Recipe, cfg: TeacherConfig) -> int | None:
    """The pid of ``cfg``'s server that a state file names, if that process is alive and is a
    vLLM server on the state's port serving ``cfg``'s model directory."""
    from avocado_llm.teachers import teacher_path

    state = read_state(recipe, cfg.name)
    if state is None or not isinstance(state.get("base_url"), str):
        return None
    port = str(state["base_url"]).rsplit(":", 1)[-1].split("/")[0]
    pid = state.get("pid")
    if not isinstance(pid, int) or not port.isdigit() or not is_server(pid, int(port)):
        return None
    if state.get("model_dir") != str(teacher_path(cfg, recipe)):
        return None
    return pid


def running_url(recipe: Recipe, cfg: TeacherConfig, patience_s: float = 60.0) -> str | None:
    """The base URL of a healthy server of ``cfg`` started by another command: its state file
    names a live server process (:func:`server_pid`) and ``/health`` answers 200. A server busy
    generating on a loaded CPU may answer late: it is given ``patience_s``."""
    if server_pid(recipe, cfg) is None:
        return None
    url = str((read_state(recipe, cfg.name) or {}).get("base_url"))
    deadline = time.monotonic() + patience_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url.removesuffix("/v1") + "/health", timeout=10.0).status_code == 200:
                return url
        if time.monotonic() > deadline or server_pid(recipe, cfg) is None:
            return None
        time.sleep(1.0)


_stopping = threading.Event()
"""Set by SIGTERM / SIGHUP while servers are up: a health wait in a worker thread gives up."""


class _Stopped(SystemExit):
    """SIGTERM or SIGHUP arrived while servers were up (a SystemExit, so that neither
    ``except Exception`` on the way nor an asyncio task swallows it: the event loop lets it
    through)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While the block runs (in the main thread): SIGTERM and SIGHUP raise :class:`_Stopped`
    and SIGINT ``KeyboardInterrupt``, so that the ``finally`` that stops the servers runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _stopping.set()
        raise _Stopped(signum)

    _stopping.clear()
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C is KeyboardInterrupt (exit 130) even where SIGINT came in ignored, as it does for a
    # command started in the background by a non-interactive shell (nohup, CI scripts).
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_on_signals(note: Callable[[str], None]) -> Iterator[None]:
    """While the block runs (in the main thread): SIGTERM / SIGHUP leave it as
    ``SystemExit(128 + the signal's number)``, said to ``note``, so that the caller's ``finally``
    stops its servers and the process then ends."""
    try:
        with _signals_raise():
            yield
    except _Stopped as stop:
        note(f"{stop}: stopping the vLLM servers")
        raise SystemExit(128 + stop.signum) from None


def server_for(cfg: TeacherConfig, recipe: Recipe) -> VllmServer:
    """The server of recipe teacher ``cfg``, not started yet, its log and state file in
    :func:`~avocado_llm.teachers.vllm_spec.state_dir`."""
    spec = spec_for(cfg, recipe)
    folder = state_dir(recipe)
    return VllmServer(spec, folder / f"{cfg.name}.log", folder / f"{cfg.name}.json")
