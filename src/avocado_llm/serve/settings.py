"""The server's settings: every field from the environment (prefix ``AVOCADO_``) or the CLI.

AVOCADO_DATABASE_URL=sqlite:///avocado.db AVOCADO_SECRET=... avocado serve --model DIR
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """How ``avocado serve`` runs: which model, where, against which ledger, with which caps."""

    model_config = SettingsConfigDict(env_prefix="AVOCADO_", extra="ignore")

    database_url: str = "sqlite:///avocado.db"
    """The ledger (SQLAlchemy URL): SQLite for one process, PostgreSQL for several."""
    redis_url: str | None = None
    """Share the per-key rate limits of every server process through this Redis
    (``redis://host:6379/0``) [in process, each process limiting on its own]."""
    secret: SecretStr = SecretStr("")
    """Server secret under which API keys are HMAC'd; the same for every replica."""
    model_dir: Path | None = None
    """A Hugging Face model directory served in process (also the tokenizer in upstream mode)."""
    model_name: str | None = None
    """The model id clients ask for [the directory's name, or the upstream's first model]."""
    upstream_url: str | None = None
    """Forward to this OpenAI-compatible base URL (e.g. a vLLM server's ``.../v1``) instead."""
    upstream_model: str | None = None
    """Model name sent upstream [``model_name``]."""
    upstream_api_key: SecretStr | None = None
    """Bearer key sent upstream, if it needs one."""
    upstream_timeout_s: float = 600.0
    """Longest wait for an upstream answer."""
    upstream_watermark: bool = True
    """Send each request's watermark upstream in ``vllm_xargs`` (the account's key, derived from
    ``secret`` and never the secret, and the plan's strength), for the vLLM logits processor
    ``avocado_watermark.vllm:WatermarkLogitsProcessor``. Off (``--no-upstream-watermark``) for
    an upstream that is not vLLM with it: another Avocado server refuses the field."""
    host: str = "127.0.0.1"
    """Interface to listen on; loopback unless deliberately exposed."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port (0: any free port)."""
    workers: int = Field(default=1, ge=1)
    """uvicorn worker processes (each loads the model; share the ledger through PostgreSQL)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps for the in-process engine."""
    threads: int | None = Field(default=None, ge=1)
    """torch CPU threads [torch's default]; 1 is fastest on a CPU shared with busy processes."""
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """Larger request bodies get 413."""
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    """Longest prompt accepted [the model's context length]."""
    max_batch_size: int = Field(default=32, ge=1)
    """Most sequences (requests × n) decoded together in one batch."""
    batch_wait_ms: float = Field(default=5.0, ge=0)
    """How long the engine waits for more requests before starting a batch."""
    default_completion_max_tokens: int = Field(default=16, ge=1)
    """``max_tokens`` of ``/v1/completions`` when the request gives none (OpenAI's default)."""
    manage_ledger_on_start: bool = True
    """At start-up, migrate the ledger and release the holds a crash left open. Off in each of
    several workers: ``avocado serve --workers N`` does it once before starting them."""
    stale_hold_after_s: float = Field(default=0.0, ge=0)
    """Release only holds older than this (at start-up and in the sweeps). Holds of servers
    that are alive are never released whatever this is: the lease decides (``lease_s``)."""
    lease_s: float = Field(default=30.0, ge=0.2, le=3600)
    """This server process's lease on its holds: a heartbeat renews it every quarter of this,
    and holds are released by another server (its start-up or its sweep, every ``lease_s``)
    only once their server's lease ran out or its process is seen gone. A server whose
    heartbeat stalls for this long stops its streams (with an error event) rather than
    stream text whose hold may have been released."""

    key_cache_s: float = Field(default=5.0, ge=0)
    """How long a key looked up for a paid request (POST) is reused without asking the ledger
    again (0: ask every time). Revocation and expiry still take effect at once: the hold that
    every paid request places checks the key in the same statement as the credit. A key's
    model allowlist, limits and plan changes reach a running server within this time."""

    @model_validator(mode="after")
    def _one_engine(self) -> ServeSettings:
        if self.model_dir is None and self.upstream_url is None:
            raise ValueError(
                "nothing to serve: give a model directory (--model DIR, AVOCADO_MODEL_DIR) "
                "or an upstream server (--upstream URL, AVOCADO_UPSTREAM_URL)"
            )
        if self.model_dir is None and not (self.model_name or self.upstream_model):
            raise ValueError(
                "name the upstream's model: --model-name NAME (AVOCADO_MODEL_NAME) or "
                "AVOCADO_UPSTREAM_MODEL"
            )
        return self

    @property
    def served_name(self) -> str:
        """The model id clients use."""
        if self.model_name:
            return self.model_name
        if self.model_dir is not None:
            return self.model_dir.resolve().name
        return str(self.upstream_model)
