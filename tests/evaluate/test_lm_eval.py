"""lm-evaluation-harness as the evaluation client: ``avocado eval --lm-eval`` against a real
``avocado serve`` (a separate process, a metered key whose plan allows log-probabilities) with
the recipe's held-out tasks over local files — ``local-completions`` for the multiple-choice
form (``echo`` and prompt log-probabilities), ``local-chat-completions`` for the generation
form — and against the model directory in process. The ledger's charges must equal what the
usage in the server's answers costs, request by request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from avocado_llm import cli
from avocado_llm.billing import MICRO, Billing, Plan, Price, charge_for
from avocado_llm.evaluate.lm_eval_writer import world_rows, write_tasks
from avocado_llm.serve.background import serve_in_thread
from servers import avocado_serve

SECRET = "lm-eval-test-secret"
PRICE = Price(input_per_1m=1_000_000, output_per_1m=2_000_000, per_request=10)
PLAN = Plan(name="eval", max_tokens=64, max_n=1, logprobs=True, max_top_logprobs=5)
TASKS = "avocado_arithmetic_mc,avocado_arithmetic"
N = 6


@dataclass
class Served:
    url: str
    """The recording proxy's /v1 URL (what lm-eval is pointed at)."""
    key: str
    billing: Billing
    answers: list[dict[str, Any]] = field(default_factory=list)
    """Every answer the server gave through the proxy: (path, status, JSON body)."""
    origin: str = ""
    """The server itself (no proxy)."""


def _recording_proxy(upstream: str, answers: list[dict[str, Any]]) -> Starlette:
    """Passes every request to ``upstream`` unchanged and keeps each answer's JSON."""
    client = httpx.AsyncClient(base_url=upstream, timeout=120)

    async def forward(request: Request) -> Response:
        path = request.url.path
        headers = {"authorization": request.headers.get("authorization", ""),
                   "content-type": "application/json"}  # fmt: skip
        sent = await client.post(path, content=await request.body(), headers=headers)
        answers.append({"path": path, "status": sent.status_code, "body": sent.json()})
        return Response(sent.content, sent.status_code, media_type="application/json")

    paths = ("/v1/completions", "/v1/chat/completions")
    return Starlette(routes=[Route(p, forward, methods=["POST"]) for p in paths])


@pytest.fixture
def served(tmp_path: Path, zoo_dir: Path) -> Iterator[Served]:
    """``avocado serve`` over the zoo's qwen-tiny as ``tiny``, behind a recording proxy."""
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    billing = Billing(database_url, SECRET)
    billing.migrate()
    billing.set_price("tiny", PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("lab", 5 * MICRO)
    _, key = billing.create_key("lab", plan=PLAN)
    flags = ["--model", str(zoo_dir / "qwen-tiny"), "--model-name", "tiny",
             "--database-url", database_url]  # fmt: skip
    try:
        with avocado_serve(*flags, secret=SECRET) as server:
            served = Served("", key, billing, origin=server.url)
            with serve_in_thread(_recording_proxy(server.url, served.answers)) as proxy:
                served.url = f"{proxy}/v1"
                yield served
    finally:
        billing.close()


def test_lm_eval_through_avocado_serve_is_metered_exactly(
    served: Served, make_recipe: Any, tmp_path: Path, zoo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    make_recipe(families=("arithmetic",))  # writes tmp_path/recipe.yaml
    monkeypatch.setenv("TINY_KEY", served.key)
    out = tmp_path / "eval"
    args = ["eval", str(tmp_path / "recipe.yaml"), "--url", served.url, "--served-model", "tiny",
            "--api-key-env", "TINY_KEY", "--tokenizer", str(zoo_dir / "qwen-tiny"),
            "--lm-eval", TASKS, "--n", str(N), "--out", str(out), "--name", "tiny"]  # fmt: skip
    assert cli.main(args) == 0

    # both APIs were used, every answer was a 200 with a usage
    answers = served.answers
    paths = {a["path"] for a in answers}
    assert paths == {"/v1/completions", "/v1/chat/completions"}
    assert all(a["status"] == 200 for a in answers), [a for a in answers if a["status"] != 200]
    echoed = [a["body"] for a in answers if a["path"] == "/v1/completions"]
    assert len(echoed) == N * 8  # one request per choice: 4 answers × 2 phrasings
    for body in echoed:
        lp = body["choices"][0]["logprobs"]
        assert lp["token_logprobs"][0] is None and len(lp["tokens"]) >= 2
        assert body["usage"]["completion_tokens"] == 1
    # the ledger charged exactly what the answers' usage costs, one event per answer
    usage = [a["body"]["usage"] for a in answers]
    events = served.billing.usage("lab")
    assert len(events) == len(answers)
    expected = sum(charge_for(PRICE, u["prompt_tokens"], u["completion_tokens"]) for u in usage)
    assert sum(e["charge"] for e in events) == expected
    assert 5 * MICRO - served.billing.balance("lab") == expected
    assert sum(e["prompt_tokens"] for e in events) == sum(u["prompt_tokens"] for u in usage)

    # the scores are in report.json (lm_eval) and the page; the written tasks are local files
    report = json.loads((out / "report.json").read_text())
    tasks = report["lm_eval"]["tiny"]["tasks"]
    assert set(tasks) == set(TASKS.split(","))
    assert tasks["avocado_arithmetic_mc"]["n"] == N and tasks["avocado_arithmetic"]["n"] == N
    assert 0 <= tasks["avocado_arithmetic"]["metrics"]["acc"] <= 1
    assert "avocado_arithmetic_mc" in (out / "report.html").read_text()
    assert (out / "lm_eval_tasks" / "avocado_arithmetic_mc.jsonl").is_file()

    # the same multiple-choice task on the model directory, in process (lm-eval's hf model):
    # the log-likelihoods through echo rank the choices as the model itself does
    local = ["eval", str(tmp_path / "recipe.yaml"), "--model", str(zoo_dir / "qwen-tiny"),
             "--lm-eval", "avocado_arithmetic_mc", "--n", str(N), "--out", str(out),
             "--name", "qwen-tiny"]  # fmt: skip
    assert cli.main(local) == 0
    report = json.loads((out / "report.json").read_text())
    in_process = report["lm_eval"]["qwen-tiny"]["tasks"]["avocado_arithmetic_mc"]["metrics"]
    assert in_process == tasks["avocado_arithmetic_mc"]["metrics"]


def test_written_tasks_are_lm_eval_yaml_over_local_jsonl(tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager, get_task_dict

    written = write_tasks(tmp_path, world_rows(["arithmetic", "facts"], 5, seed=3))
    assert written.expand(["avocado", "avocado_mc", "gsm8k"]) == [
        "avocado_arithmetic", "avocado_facts", "avocado_arithmetic_mc", "avocado_facts_mc",
        "gsm8k",
    ]  # fmt: skip
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    loaded = get_task_dict(written.expand(["avocado", "avocado_mc"]), manager)
    mc = loaded["avocado_facts_mc"]
    docs = list(mc.test_docs())
    assert len(docs) == 5 and mc.OUTPUT_TYPE == "multiple_choice"
    for doc in docs:  # the gold answer in both phrasings, among distinct distractors
        choices, gold = mc.doc_to_choice(doc), mc.doc_to_target(doc)
        assert [choices[i] for i in gold] == [doc["answer"], f"The answer is {doc['answer']}."]
        assert len(set(choices)) == len(choices) == 8
    gen = loaded["avocado_arithmetic"]
    doc = next(iter(gen.test_docs()))
    assert gen.OUTPUT_TYPE == "generate_until"
    assert gen.process_results(doc, [f"The answer is {doc['answer']}."]) == {"acc": 1.0}
    assert gen.process_results(doc, ["The answer is 100000."]) == {"acc": 0.0}


def test_own_data_sources_become_tasks_scored_by_their_verifier(tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager, get_task_dict

    from avocado_llm.config import load_recipe
    from avocado_llm.evaluate.lm_eval_run import recipe_rows

    sums, chats = tmp_path / "sums.jsonl", tmp_path / "open.jsonl"
    sums.write_text(
        "".join(
            json.dumps({"question": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)}) + "\n"
            for a in range(24)
        )
    )
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Topic {i}?"}]})
                             + "\n" for i in range(24)))  # fmt: skip
    numbers = {"name": "sums", "path": str(sums), "prompt": "question", "reference": "answer",
               "verifier": "number", "heldout_fraction": 0.5}  # fmt: skip
    chatty = {"name": "chats", "path": str(chats), "messages": "messages", "heldout_fraction": 0.5}
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(json.dumps({
        "name": "own", "output_dir": str(tmp_path / "runs"), "world": {"families": ["counting"]},
        "data": {"sources": [numbers, chatty]}, "teachers": [{"name": "qwen-tiny", "zoo": True}],
    }))  # fmt: skip
    groups = recipe_rows(load_recipe(recipe_file), 4)
    assert set(groups) == {"counting", "sums"}  # the open source has no verifier: judged only
    assert len(groups["sums"]) == 4 and groups["sums"][0].verifier == "number"
    written = write_tasks(tmp_path / "tasks", groups)
    assert written.expand(["avocado"]) == ["avocado_counting", "avocado_sums"]
    manager = TaskManager(include_path=str(written.directory), include_defaults=False)
    loaded = get_task_dict(["avocado_sums", "avocado_sums_mc"], manager)
    gen, mc = loaded["avocado_sums"], loaded["avocado_sums_mc"]
    doc = next(iter(gen.test_docs()))
    assert gen.process_results(doc, [f"It is {doc['answer']}.0"]) == {"acc": 1.0}  # number check
    assert gen.process_results(doc, ["It is 1000."]) == {"acc": 0.0}
    a, b = doc["prompt"].removeprefix("What is ").rstrip("?").split(" + ")
    echo = f"{doc['answer']}, from {a} and {b}."  # the question's numbers are echoes
    assert gen.process_results(doc, [echo]) == {"acc": 1.0}  # the question reaches the verifier
    mc_doc = next(iter(mc.test_docs()))
    choices = mc.doc_to_choice(mc_doc)
    assert [choices[i] for i in mc.doc_to_target(mc_doc)] == [mc_doc["answer"]]  # bare answers


def test_a_url_run_sends_each_task_to_the_api_its_form_needs(tmp_path: Path) -> None:
    """Generation through chat completions, loglikelihood through completions with the
    tokenizer; a group of lm-eval's (here one over our tasks) by its tasks' form."""
    from lm_eval.tasks import TaskManager

    from avocado_llm.evaluate.lm_eval_run import Target, _plans
    from avocado_llm.evaluate.runner import EvalError

    written = write_tasks(tmp_path, world_rows(["facts"], 5, seed=0))
    (tmp_path / "mine.yaml").write_text("group: mine\ntask: [avocado_facts_mc]\n")
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    target = Target(url="http://127.0.0.1:9/v1", served_model="tiny", tokenizer=tmp_path)
    plans = list(_plans(target, ["avocado_facts", "mine"], written, manager))
    assert [(model, tasks) for model, _, tasks in plans] == [
        ("local-chat-completions", ["avocado_facts"]), ("local-completions", ["mine"])
    ]  # fmt: skip
    assert plans[1][1]["base_url"] == "http://127.0.0.1:9/v1/completions"
    assert plans[1][1]["tokenized_requests"] is True
    with pytest.raises(EvalError, match="--tokenizer"):
        list(_plans(Target(url="http://x/v1", served_model="tiny"), ["mine"], written, manager))


def test_lm_eval_through_the_upstream_gateway_is_metered_by_the_gateway(
    served: Served, make_recipe: Any, tmp_path: Path, zoo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``avocado serve --upstream`` in front of the server (as in front of vLLM): echo and the
    prompt's log-probabilities are forwarded, and the gateway's own ledger charges what the
    usage in its answers costs."""
    from avocado_llm.serve import ServeSettings, create_app

    make_recipe(families=("facts",))
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    billing = Billing(url, SECRET)
    billing.migrate()
    billing.set_price("tiny", PRICE.input_per_1m, PRICE.output_per_1m, PRICE.per_request)
    billing.create_account("lab", MICRO)
    _, key = billing.create_key("lab", plan=PLAN)
    settings = ServeSettings(
        upstream_url=f"{served.origin}/v1",
        upstream_api_key=served.key,
        model_name="tiny",
        database_url=url,
        secret=SECRET,
        upstream_watermark=False,
    )  # an Avocado upstream: no vllm_xargs
    answers: list[dict[str, Any]] = []
    monkeypatch.setenv("GATEWAY_KEY", key)
    args = ["eval", str(tmp_path / "recipe.yaml"), "--served-model", "tiny",
            "--api-key-env", "GATEWAY_KEY", "--tokenizer", str(zoo_dir / "qwen-tiny"),
            "--lm-eval", "avocado_facts_mc", "--n", "3", "--out", str(tmp_path / "eval"),
            "--name", "gateway"]  # fmt: skip
    with (
        serve_in_thread(create_app(settings, billing=billing)) as gateway,
        serve_in_thread(_recording_proxy(gateway, answers)) as proxy,
    ):
        assert cli.main([*args, "--url", f"{proxy}/v1"]) == 0
    docs = (tmp_path / "eval" / "lm_eval_tasks" / "avocado_facts_mc.jsonl").read_text()
    choices = sum(len(json.loads(line)["choices"]) for line in docs.splitlines())
    assert len(answers) == choices and all(a["status"] == 200 for a in answers)
    usage = [a["body"]["usage"] for a in answers]
    expected = sum(charge_for(PRICE, u["prompt_tokens"], u["completion_tokens"]) for u in usage)
    assert (
        sum(e["charge"] for e in billing.usage("lab")) == expected == MICRO - billing.balance("lab")
    )
    assert len(served.billing.usage("lab")) == len(answers)  # the server behind billed each once
    billing.close()
