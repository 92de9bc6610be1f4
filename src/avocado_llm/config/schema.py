"""The recipe's schema: one documented dataclass per section, each with its own checks."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from avocado_llm.config.fields import Check, check_range, did_you_mean
from avocado_llm.config.sources import DataConfig
from avocado_llm.config.student import StudentConfig, TrainingConfig
from avocado_llm.config.teacher_options import PromptTemplate, VllmConfig

DEFAULT_FAMILIES = ("arithmetic", "reverse", "facts", "counting", "sorting", "units")
"""The tiny world's task families, by name only: the schema holds names as plain data, and the
world checks them where they are used (``avocado_llm.world.checks``, ``avocado recipe check``)."""
STRATEGIES = ("verify", "vote", "min_ce", "judge", "all")
"""Fusion strategies; ``single:<teacher name>`` learns from one teacher only."""


def _strategy_checks(strategy: str, where: str) -> list[Check]:
    if strategy in STRATEGIES or re.fullmatch(r"single:.+", strategy):
        return []
    fix = did_you_mean(strategy, list(STRATEGIES)) or (
        f"use one of {', '.join(STRATEGIES)}, or single:<teacher name>"
    )
    return [(where, f"unknown fusion strategy {strategy!r}", fix)]


@dataclass(kw_only=True)
class WorldConfig:
    """The tiny world: synthetic, verifiable task families and the teacher zoo."""

    families: list[str] = field(default_factory=lambda: list(DEFAULT_FAMILIES))
    """Task families to generate prompts for, harvest, train and evaluate on."""
    train_per_family: int = 1000
    """Prompts per family in the training split (harvest draws from it)."""
    heldout_per_family: int = 300
    """Prompts per family in the held-out split, which never overlaps the training split."""
    zoo_dir: Path = Path("zoo")
    """Where `avocado zoo build` writes the tiny teachers; relative to the working directory."""
    unverified: list[str] = field(default_factory=lambda: ["facts", "units"])
    """Families treated as having no verifier, as most real prompts have none: their gold
    answers are used for evaluation only, never by fusion, whose targets there come from
    label-free strategies (`verify` falls back to `vote`). Names must be task families; one
    not in `families` simply has no prompts."""

    def check(self) -> list[Check]:
        problems = check_range(self, "train_per_family", 0, low_open=True)
        problems += check_range(self, "heldout_per_family", 0, low_open=True)
        return problems  # no families at all is fine with data.sources (Recipe.check)


@dataclass(kw_only=True)
class TeacherConfig:
    """One teacher model: a local checkpoint or an OpenAI-compatible endpoint."""

    name: str
    """Short unique name, used in records, reports and `single:<name>` (letters, digits, `_.-`)."""
    kind: Literal["local", "openai"] = "local"
    """`local`: a Hugging Face checkpoint run in-process; `openai`: an OpenAI-compatible HTTP
    endpoint such as a vLLM server."""
    zoo: bool = False
    """True for a tiny-world teacher built by `avocado zoo build`: `path` then defaults to
    `world.zoo_dir/<name>` and need not exist when the recipe is loaded."""
    path: Path | None = None
    """Local teachers: an HF model directory or a `.gguf` file, relative to the recipe's
    directory (for zoo teachers: relative to the working directory, like `world.zoo_dir`)."""
    gguf_file: str | None = None
    """Name of the `.gguf` file inside the `path` directory, passed as `gguf_file=` to
    `from_pretrained`."""
    chat_template: Path | None = None
    """A Jinja file that replaces the tokenizer's chat template (base models such as the Gemma
    GGUF carry none); relative to the recipe's directory."""
    base_url: str | None = None
    """OpenAI-compatible teachers: the API base URL, e.g. `http://127.0.0.1:8001/v1`."""
    model: str | None = None
    """OpenAI-compatible teachers: the model name sent with each request."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself), e.g.
    `OPENAI_API_KEY`; leave unset for endpoints without authentication."""
    licence: str = "unknown"
    """Licence of the teacher's weights and outputs; copied into every harvest record and into the
    student's model card."""
    max_concurrency: int = 8
    """Most requests (or local batches) in flight to this teacher at once."""
    supports_logprobs: bool = True
    """Whether the teacher returns top-k log-probabilities; if not, only its text is distilled."""
    max_n: int | None = None
    """OpenAI-compatible teachers: most answers asked for in one request (`n`); the other
    samples of a prompt go in further requests, each with the seed moved on. Set 1 for an
    endpoint that refuses `n` > 1 (many hosted APIs; Avocado's own on plans with `max_n: 1`).
    null: all of a prompt's samples in one request."""
    keep_reasoning: bool = False
    """Keep the teacher's reasoning (e.g. gpt-oss's analysis channel) in the target text; by
    default only the final answer is kept."""
    engine: Literal["hf", "vllm"] = "hf"
    """Local teachers: `hf` runs the checkpoint in this process; `vllm` serves it with a vLLM
    OpenAI-compatible server on loopback (started by `avocado teachers up`, `avocado harvest`
    and `avocado run`, from the `make vllm` virtualenv); `path` is then an HF safetensors
    directory (`avocado models import` makes one from a GGUF)."""
    vllm: VllmConfig = field(default_factory=VllmConfig)
    """The vLLM server's settings (engine: vllm)."""
    prompt_template: PromptTemplate | None = None
    """For a base model without a chat template: a plain-text prompt (few-shot prefix, turns,
    stop strings), sent to /v1/completions by vLLM and OpenAI-compatible teachers and rendered
    as the chat template by the in-process one. Not with chat_template."""

    def check(self) -> list[Check]:
        problems = check_range(self, "max_concurrency", 0, low_open=True)
        if self.max_n is not None:
            problems += check_range(self, "max_n", 1)
        problems += _engine_checks(self)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            problems.append(
                ("name", f"bad teacher name {self.name!r}", "use letters, digits, _ . -")
            )
        if self.kind == "openai":
            if self.zoo:
                problems.append(("zoo", "a zoo teacher is local", "set kind: local or zoo: false"))
            if self.base_url is None:
                fix = "set base_url to the endpoint, e.g. http://127.0.0.1:8001/v1"
                problems.append(("base_url", "an openai teacher needs base_url", fix))
            elif not self.base_url.startswith(("http://", "https://")):
                fix = "start it with http:// or https://"
                problems.append(("base_url", f"{self.base_url!r} is not an HTTP URL", fix))
            if self.model is None:
                problems.append(("model", "an openai teacher needs model", "set the model name"))
        if self.kind == "local" and self.base_url is not None:
            fix = "set kind: openai, or remove base_url"
            problems.append(("base_url", "base_url is set but kind is 'local'", fix))
        if self.kind == "local" and self.path is None and not self.zoo:
            fix = "set path to a model directory or .gguf file, or set zoo: true"
            problems.append(("path", "a local teacher needs path", fix))
        elif (
            self.kind == "local"
            and self.path
            and not self.zoo
            and self.engine != "vllm"  # checked when its server starts: an import makes it
            and not self.path.exists()
        ):
            fix = "fix the path (relative paths start at the recipe's directory), or set zoo: true"
            problems.append(("path", f"no such file or directory: {self.path}", fix))
        if self.chat_template is not None and not self.chat_template.is_file():
            fix = "fix the path (relative paths start at the recipe's directory)"
            problems.append(("chat_template", f"no such file: {self.chat_template}", fix))
        if self.api_key_env is not None and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.api_key_env):
            value = self.api_key_env
            message = (  # never echo a secret back
                f"this looks like a key, not a variable name (it starts {value[:3]!r})"
                if value.startswith("sk-") or len(value) > 64
                else f"bad environment variable name {value!r}"
            )
            fix = "export the key as e.g. OPENAI_API_KEY and put that name here"
            problems.append(("api_key_env", message, fix))
        return problems


def _engine_checks(t: TeacherConfig) -> list[Check]:
    problems: list[Check] = []
    if t.prompt_template is not None and t.chat_template is not None:
        fix = "keep one: prompt_template for a base model, chat_template for a chat model"
        problems.append(("prompt_template", "chat_template is set too", fix))
    if t.engine != "vllm":
        return problems
    if t.kind != "local":
        fix = "an openai teacher is a server already: set engine: hf, or kind: local with path"
        problems.append(("engine", "engine: vllm is for local teachers", fix))
    elif t.gguf_file is not None or (t.path is not None and t.path.is_file()):
        fix = "import it: avocado models import FILE.gguf --out DIR, then set path: DIR"
        problems.append(("engine", "vLLM serves an HF safetensors directory, not a GGUF", fix))
    return problems


@dataclass(kw_only=True)
class HarvestConfig:
    """How teachers are asked: prompts, sampling, batching, retries."""

    prompts_per_family: int = 300
    """Training prompts per task family sent to every teacher."""
    samples_per_prompt: int = 1
    """Answers drawn from each teacher per prompt (more than 1 needs temperature > 0 to differ)."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = 32
    """Longest answer, in the teacher's tokens."""
    top_logprobs: int = 20
    """Top-k log-probabilities kept per answer token (0 to 20, OpenAI's cap); 0 keeps text only."""
    batch_size: int = 32
    """Prompts per batch for local teachers; also the unit lost if a run is interrupted."""
    shard_size: int = 512
    """Records per Parquet shard."""
    max_retries: int = 5
    """Retries per failed request (with exponential backoff) before the run stops."""
    request_timeout_s: float = 60.0
    """Seconds to wait for one request to an endpoint."""
    from_run: str | None = None
    """Reuse (read only) the harvest of the run of this name under the same output_dir instead
    of asking the teachers again, e.g. so that ablations train on the very same answers."""

    def check(self) -> list[Check]:
        problems: list[Check] = []
        if self.from_run is not None and not re.fullmatch(r"[a-z0-9_-]+", self.from_run):
            fix = "name a run in the same output_dir, e.g. 'tiny'"
            problems.append(("from_run", f"bad run name {self.from_run!r}", fix))
        return [
            *problems,
            *check_range(self, "prompts_per_family", 1),
            *check_range(self, "samples_per_prompt", 1),
            *check_range(self, "temperature", 0),
            *check_range(self, "top_p", 0, 1, low_open=True),
            *check_range(self, "max_new_tokens", 1),
            *check_range(self, "top_logprobs", 0, 20),
            *check_range(self, "batch_size", 1),
            *check_range(self, "shard_size", 1),
            *check_range(self, "max_retries", 0),
            *check_range(self, "request_timeout_s", 0, low_open=True),
        ]


@dataclass(kw_only=True)
class FusionConfig:
    """How teacher answers are chosen and weighted for each prompt."""

    strategy: str = "verify"
    """One of verify (keep answers the task verifier accepts), vote (majority answer), min_ce
    (lowest cross-entropy under the other teachers), judge (a judge teacher picks), all (every
    answer), or single:<teacher name>."""
    judge_teacher: str | None = None
    """Name of the teacher that judges answers; required by the judge strategy. A judge is
    only as good as its knowledge: a tiny teacher is a poor judge outside its own families."""
    min_weight: float = 0.0
    """Answers weighted below this are dropped from the training set: a prompt is kept only if
    its chosen answer's support (its share of the strategy's score, e.g. of the weighted vote;
    1 for verified answers and for `all` / `single:`) reaches this."""
    use_reference: bool = False
    """With verify: where no teacher's answer passes the verifier, learn the prompt's reference
    answer itself (cross-entropy only: no teacher distribution to distil), so a prompt every
    teacher gets wrong still teaches. The reference is learnt as written (e.g. `42`, where the
    teachers write `The answer is 42.`); prompts without one (and unverified families or
    sources) are unchanged."""

    def check(self) -> list[Check]:
        problems = _strategy_checks(self.strategy, "strategy") + check_range(
            self, "min_weight", 0, 1
        )
        if self.strategy == "judge" and self.judge_teacher is None:
            fix = "set judge_teacher to one of the teachers' names"
            problems.append(("judge_teacher", "the judge strategy needs a judge teacher", fix))
        return problems


DEFAULT_JUDGE_RUBRIC = (
    "You are an impartial judge. Given a user's prompt and two answers, A and B, decide which "
    "answer serves the user better: correct, helpful, complete and concise; ignore the order "
    "and the length. Reply with one word: A, B or tie."
)
"""What makes a better answer, unless the recipe's ``eval.judge_rubric`` says otherwise."""


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluation on held-out prompts: the student against every teacher and the baselines."""

    heldout_per_family: int = 300
    """Held-out prompts per family to score (at most world.heldout_per_family)."""
    batch_size: int = 64
    """Prompts per generation batch."""
    max_new_tokens: int = 32
    """Longest answer generated per prompt."""
    baselines: list[str] = field(default_factory=lambda: ["all"])
    """Fusion strategies that also train a student, as baselines for the chosen strategy; ``sft``
    is the chosen strategy trained without token-level KD (cross-entropy only)."""
    heldout_per_source: int | None = None
    """Held-out prompts scored per data source, at most (null: eval.heldout_per_family)."""
    judge: str | None = None
    """The teacher that judges the student's answers against each teacher's on the held-out
    prompts of sources without a verifier (null: fusion.judge_teacher, else the first teacher).
    Unused when judge_url is set."""
    judge_url: str | None = None
    """An OpenAI-compatible base URL whose model judges instead of a teacher (set judge_model)."""
    judge_model: str | None = None
    """The model name sent to judge_url."""
    judge_api_key_env: str | None = None
    """Environment variable holding judge_url's key (never the key itself)."""
    judge_rubric: str = DEFAULT_JUDGE_RUBRIC
    """The judge's system prompt: what makes an answer better. Each pair of answers is asked in
    both orders, so a judge that favours a position gives a tie, not a win."""

    def check(self) -> list[Check]:
        problems = [
            *check_range(self, "heldout_per_family", 1),
            *check_range(self, "batch_size", 1),
        ]
        problems += check_range(self, "max_new_tokens", 1)
        if self.heldout_per_source is not None:
            problems += check_range(self, "heldout_per_source", 1)
        if self.judge_url is not None and not self.judge_model:
            problems.append(("judge_model", "judge_url needs a model name", "set judge_model"))
        if not self.judge_rubric.strip():
            problems.append(("judge_rubric", "empty rubric", "describe a better answer"))
        for i, strategy in enumerate(self.baselines):
            if strategy != "sft":
                problems += _strategy_checks(strategy, f"baselines[{i}]")
        return problems


@dataclass(kw_only=True)
class ServeConfig:
    """The OpenAI-compatible HTTP server in front of the student."""

    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 listens on every interface."""
    port: int = 8000
    """TCP port to listen on."""
    model_name: str = "avocado-tiny"
    """Model name clients send in requests and see in /v1/models."""

    def check(self) -> list[Check]:
        return check_range(self, "port", 1, 65535)


@dataclass(kw_only=True)
class Recipe:
    """A whole run: world, teachers, harvest, fusion, student, training, evaluation, serving."""

    name: str
    """Name of the run (lowercase letters, digits, _ and -); its files go to output_dir/name."""
    seed: int = 0
    """Seed of every random choice: task generation, sampling, initialisation, data order."""
    output_dir: Path = Path("runs")
    """Directory that holds run directories; relative to the working directory."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The tiny world's tasks and teacher zoo."""
    data: DataConfig = field(default_factory=DataConfig)
    """Your own prompt datasets (`data.sources`); a recipe may have these, world families, or
    both."""
    teachers: list[TeacherConfig]
    """The models to learn from; at least one, with unique names."""
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    """How the teachers are asked."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """How their answers are combined."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """The model being trained."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """How it is trained."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How it is evaluated."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """How it is served."""

    @property
    def run_dir(self) -> Path:
        """Where this run's harvest, checkpoints and reports go."""
        return self.output_dir / self.name

    @property
    def harvest_dir(self) -> Path:
        """This run's harvest, or the one it reuses (``harvest.from_run``)."""
        return self.output_dir / (self.harvest.from_run or self.name) / "harvest"

    def check(self) -> list[Check]:
        problems: list[Check] = []
        if not re.fullmatch(r"[a-z0-9_-]+", self.name):
            slug = re.sub(r"[^a-z0-9_-]+", "-", self.name.lower()).strip("-") or "my-run"
            problems.append(("name", f"bad run name {self.name!r}", f"use e.g. {slug!r}"))
        if not self.teachers:
            problems.append(("teachers", "no teachers", "list at least one under teachers:"))
        if not self.world.families and not self.data.sources:
            fix = f"list some of {', '.join(DEFAULT_FAMILIES)}, or add data.sources"
            problems.append(("world.families", "no task families and no data sources", fix))
        for i, source in enumerate(self.data.sources):
            if source.name in self.world.families:
                fix = "rename the source, or drop the family from world.families"
                message = f"source name {source.name!r} is also a task family"
                problems.append((f"data.sources[{i}].name", message, fix))
        groups = [*self.world.families, *(s.name for s in self.data.sources)]
        for name in self.training.family_weights:
            if name not in groups:
                fix = did_you_mean(name, groups) or f"families and sources: {', '.join(groups)}"
                message = f"{name!r} is no task family or source of this recipe"
                problems.append((f"training.family_weights.{name}", message, fix))
        names = [t.name for t in self.teachers]
        for i, name in enumerate(names):
            if name in names[:i]:
                fix = "give every teacher its own name"
                problems.append((f"teachers[{i}].name", f"duplicate teacher name {name!r}", fix))
        known = ", ".join(n for n in names if n) or "(none)"
        strategies = [("fusion.strategy", self.fusion.strategy)]
        strategies += [(f"eval.baselines[{i}]", s) for i, s in enumerate(self.eval.baselines)]
        for where, strategy in strategies:
            if strategy.startswith("single:") and strategy.removeprefix("single:") not in names:
                problems.append((where, f"{strategy!r} names no teacher", f"teachers are: {known}"))
        judge = self.fusion.judge_teacher
        if judge is not None and judge not in names:
            problems.append(
                ("fusion.judge_teacher", f"no teacher {judge!r}", f"use one of: {known}")
            )
        origin = self.student.init_from_teacher
        if origin is not None and origin not in names:
            message = f"no teacher {origin!r}"
            problems.append(("student.init_from_teacher", message, f"use one of: {known}"))
        if self.eval.judge is not None and self.eval.judge not in names:
            message = f"no teacher {self.eval.judge!r}"
            problems.append(("eval.judge", message, f"use one of: {known}"))
        if self.eval.heldout_per_family > self.world.heldout_per_family:
            message = f"{self.eval.heldout_per_family} > world.heldout_per_family"
            fix = f"use at most {self.world.heldout_per_family}, or enlarge the world's split"
            problems.append(("eval.heldout_per_family", message, fix))
        if self.harvest.prompts_per_family > self.world.train_per_family:
            message = f"{self.harvest.prompts_per_family} > world.train_per_family"
            fix = f"use at most {self.world.train_per_family}, or enlarge the world's split"
            problems.append(("harvest.prompts_per_family", message, fix))
        return problems
