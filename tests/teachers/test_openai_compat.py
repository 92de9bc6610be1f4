"""The endpoint teacher over real HTTP on loopback, against a server that answers with the real
local teacher (``endpoint_server``), with injected rate limits, outages and dropped connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from endpoint_server import EndpointOptions, EndpointServer, serve_teacher

from avocado_llm.teachers.base import Completion, Messages, SamplingParams, Teacher, TeacherError
from avocado_llm.teachers.hf import LocalTeacher
from avocado_llm.teachers.openai_compat import OpenAICompatTeacher
from avocado_llm.world.tasks import get_family

KEY_ENV = "AVOCADO_TEST_ENDPOINT_KEY"
KEY = "sk-test-0123456789"
SHORT = SamplingParams(max_new_tokens=3, top_logprobs=0)
HELLO: list[Messages] = [[{"role": "user", "content": "What is 2 + 3?"}]]


@pytest.fixture(scope="module")
def local(zoo_dir: Path) -> LocalTeacher:
    return LocalTeacher("qwen-tiny", zoo_dir / "qwen-tiny", device="cpu", batch_size=8)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, KEY)
    yield KEY_ENV


def endpoint(server: EndpointServer, **kwargs: object) -> OpenAICompatTeacher:
    kwargs = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 30.0, **kwargs}
    return OpenAICompatTeacher("remote-qwen", server.base_url, "qwen-tiny", **kwargs)  # type: ignore[arg-type]


def ask(
    teacher: OpenAICompatTeacher, conversations: list[Messages], params: SamplingParams
) -> list[list[Completion]]:
    async def go() -> list[list[Completion]]:
        try:
            return await teacher.generate(conversations, params)
        finally:
            await teacher.aclose()

    return asyncio.run(go())


def test_greedy_answers_and_logprobs_equal_the_local_teachers(
    local: LocalTeacher, key_env: str
) -> None:
    prompts = [e.messages for e in get_family("arithmetic").generate("heldout", 6)]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, top_logprobs=5)
    expected = local.generate_sync(prompts, params)
    with serve_teacher(local, EndpointOptions(api_key=KEY)) as server:
        teacher = endpoint(server, api_key_env=key_env)
        assert isinstance(teacher, Teacher)
        assert teacher.info.revision == f"{server.base_url}#qwen-tiny"
        assert teacher.info.tokenizer == "remote"
        got = ask(teacher, prompts, params)
        assert server.requests == 6
        models = httpx.get(f"{server.base_url}/models").json()
        assert [m["id"] for m in models["data"]] == ["qwen-tiny"]
        assert all(b["logprobs"] is True and b["top_logprobs"] == 5 for b in server.bodies)
    for [want], [have] in zip(expected, got, strict=True):
        assert have.text == want.text
        assert have.finish_reason == want.finish_reason
        assert have.prompt_tokens == want.prompt_tokens > 0
        assert have.completion_tokens == want.completion_tokens > 0
        assert have.latency_s > 0
        assert have.token_ids is None and have.reasoning is None
        assert have.logprobs is not None and want.logprobs is not None
        assert len(have.logprobs) == len(want.logprobs) > 0
        for h, w in zip(have.logprobs, want.logprobs, strict=True):
            assert h.token_id is None and h.top_ids == [None] * 5
            assert h.token == w.token
            assert h.top_tokens == w.top_tokens
            assert h.logprob == pytest.approx(w.logprob, abs=1e-4)
            assert h.top_logprobs == pytest.approx(w.top_logprobs, abs=1e-4)


def test_sampling_gives_n_answers_per_prompt_in_one_request_each(local: LocalTeacher) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=4, n=3, top_logprobs=2)
    with serve_teacher(local) as server:
        got = ask(endpoint(server), HELLO * 2, params)
        assert server.requests == 2
    assert [len(c) for c in got] == [3, 3]
    assert all(c.logprobs and len(c.logprobs[0].top_tokens) == 2 for cs in got for c in cs)


def test_a_server_that_ignores_n_is_asked_again_with_new_seeds(local: LocalTeacher) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=3, n=3, top_logprobs=0, seed=7)
    with serve_teacher(local, EndpointOptions(ignore_n=True)) as server:
        [answers] = ask(endpoint(server), HELLO, params)
        assert server.requests == 3
        assert [b["seed"] for b in server.bodies] == [7, 8, 9]
        assert [b["n"] for b in server.bodies] == [3, 2, 1]
        assert all("logprobs" not in b for b in server.bodies)
    assert len(answers) == 3 and all(a.logprobs is None for a in answers)


@pytest.mark.parametrize("max_n", [1, 2])
def test_max_n_splits_a_prompts_samples_over_requests(local: LocalTeacher, max_n: int) -> None:
    """An endpoint that refuses n > max_n (Avocado's own API on its default plan) is asked
    max_n answers at a time, the seed moved on each time: all five samples, none repeated."""
    params = SamplingParams(temperature=1.0, max_new_tokens=3, n=5, top_logprobs=0, seed=7)
    with serve_teacher(local) as server:
        [answers] = ask(endpoint(server, max_n=max_n), HELLO, params)
        sizes = [b["n"] for b in server.bodies]
        seeds = [b["seed"] for b in server.bodies]
    assert len(answers) == 5 and sum(sizes) == 5 and max(sizes) == max_n
    assert seeds == [7 + sum(sizes[:i]) for i in range(len(sizes))]


def test_a_client_can_reuse_the_teacher_across_event_loops(local: LocalTeacher) -> None:
    with serve_teacher(local) as server:
        teacher = endpoint(server)
        first = asyncio.run(teacher.generate(HELLO, SHORT))
        second = ask(teacher, HELLO, SHORT)
    assert first[0][0].text == second[0][0].text


def test_429_is_retried_after_the_servers_retry_after(local: LocalTeacher) -> None:
    options = EndpointOptions(fail_first_n_with_429=2, retry_after="0.2")
    with serve_teacher(local, options) as server:
        t0 = time.perf_counter()
        [[answer]] = ask(endpoint(server, max_retries=3, backoff_max_s=1.0), HELLO, SHORT)
        elapsed = time.perf_counter() - t0
        assert server.requests == 3
    assert answer.text
    assert elapsed >= 0.4  # two waits of Retry-After; the jittered backoff alone is <= 0.03 s


def test_retry_after_is_capped_at_the_longest_backoff(local: LocalTeacher) -> None:
    options = EndpointOptions(fail_first_n_with_429=2, retry_after="2")
    with serve_teacher(local, options) as server:
        t0 = time.perf_counter()
        ask(endpoint(server, max_retries=3, backoff_max_s=0.1), HELLO, SHORT)
        assert server.requests == 3
    assert time.perf_counter() - t0 < 2.0  # two waits of 0.1 s, not of 2 s


def test_dropped_connections_are_retried(local: LocalTeacher) -> None:
    with serve_teacher(local, EndpointOptions(drop_first_n=3)) as server:
        # The server hangs up, it does not answer a 500.
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{server.base_url}/chat/completions", json={})
        [[answer]] = ask(endpoint(server, max_retries=2), HELLO, SHORT)
        assert server.requests == 4
    assert answer.text


def test_timeouts_are_retried_then_reported(local: LocalTeacher) -> None:
    with serve_teacher(local, EndpointOptions(delay_s=0.5)) as server:
        with pytest.raises(TeacherError, match=r"2 attempts.*within request_timeout_s \(0.1 s\)"):
            ask(endpoint(server, max_retries=1, timeout_s=0.1), HELLO, SHORT)
        assert server.requests == 2


def test_503_past_max_retries_fails_naming_the_teacher(local: LocalTeacher) -> None:
    with serve_teacher(local, EndpointOptions(fail_first_n_with_503=10)) as server:
        with pytest.raises(TeacherError, match=r"remote-qwen.*3 attempts.*503") as err:
            ask(endpoint(server, max_retries=2), HELLO, SHORT)
        assert server.requests == 3
    assert err.value.teacher == "remote-qwen"


def test_400_fails_at_once_with_the_servers_message(local: LocalTeacher) -> None:
    with serve_teacher(local, EndpointOptions(always_400=True)) as server:
        with pytest.raises(TeacherError, match="400") as err:
            ask(endpoint(server), HELLO, SHORT)
        assert server.requests == 1
    assert "Injected bad request: 'messages' is malformed." in str(err.value)
    assert "remote-qwen" in str(err.value)


def test_an_unknown_model_fails_at_once(local: LocalTeacher) -> None:
    with serve_teacher(local) as server:
        teacher = OpenAICompatTeacher("remote-qwen", server.base_url, "no-such-model")
        with pytest.raises(TeacherError, match=r"404.*'no-such-model' does not exist"):
            ask(teacher, HELLO, SHORT)
        assert server.requests == 1


def test_a_missing_key_variable_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(TeacherError, match=f"remote-qwen.*{KEY_ENV}"):
        OpenAICompatTeacher("remote-qwen", "http://127.0.0.1:9/v1", "m", api_key_env=KEY_ENV)


def test_a_wrong_key_fails_at_once_without_showing_the_key(
    local: LocalTeacher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-wrong-secret")
    with serve_teacher(local, EndpointOptions(api_key=KEY)) as server:
        with pytest.raises(TeacherError, match=r"401.*Incorrect API key") as err:
            ask(endpoint(server, api_key_env=KEY_ENV), HELLO, SHORT)
        assert server.requests == 1
    assert "sk-wrong-secret" not in str(err.value)


def test_concurrency_stays_within_the_limit(local: LocalTeacher) -> None:
    prompts = [e.messages for e in get_family("arithmetic").generate("heldout", 8)]
    with serve_teacher(local, EndpointOptions(delay_s=0.15)) as server:
        got = ask(endpoint(server, max_concurrency=2), prompts, SHORT)
        assert server.requests == 8
        assert server.max_in_flight == 2
    assert len(got) == 8


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("keep", [True, False])
def test_reasoning_is_kept_only_when_asked(local: LocalTeacher, field: str, keep: bool) -> None:
    options = EndpointOptions(reasoning="Add the units first.", reasoning_field=field)
    with serve_teacher(local, options) as server:
        [[answer]] = ask(endpoint(server, keep_reasoning=keep), HELLO, SHORT)
    assert answer.reasoning == ("Add the units first." if keep else None)
    assert answer.text
