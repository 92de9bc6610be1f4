"""How an ``engine: vllm`` teacher's server is run: the vLLM virtualenv's python, a free port
of 127.0.0.1, and the command line and environment built from the recipe's ``teachers[].vllm``
settings (:class:`ServerSpec`). Starting, watching and stopping the process is
:mod:`~avocado_llm.teachers.vllm_process`'s; the module docstring of
:mod:`~avocado_llm.teachers.vllm_server` says why the command is what it is.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from avocado_llm.config import Recipe, TeacherConfig
from avocado_llm.teachers.base import TeacherError

MODULE = "vllm.entrypoints.openai.api_server"
MAX_LOGPROBS = 20
HOST = "127.0.0.1"
PYTHON_ENV = "AVOCADO_VLLM_PYTHON"
"""The vLLM virtualenv's python, where it is not ``.venv-vllm/bin/python`` (``make vllm``)."""


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
