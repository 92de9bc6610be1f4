"""Every refusal in OpenAI's envelope, raised as the official client's exception classes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest
from serve_helpers import World
from sqlalchemy import update

from avocado_llm.billing import Plan
from avocado_llm.billing.schema import ApiKey

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]


def _ask(client: openai.OpenAI, model: str, **params: object) -> object:
    return client.chat.completions.create(model=model, messages=QUESTION, **params)  # type: ignore[call-overload]


def test_missing_wrong_and_revoked_keys_get_401(world: World) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        world.client("avk_not-a-real-key").models.list()
    assert e.value.code == "invalid_api_key"
    assert "avk_not-a-real-key" not in str(e.value)  # a key is never echoed
    response = httpx.get(f"{world.base_url}/models")
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    key_id, key = world.new_key()
    client = world.client(key)
    client.models.list()
    world.billing.revoke_key(key_id)
    with pytest.raises(openai.AuthenticationError):
        _ask(client, world.model, max_tokens=4)
    _, expired = world.new_key(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError):
        _ask(world.client(expired), world.model, max_tokens=4)


def test_a_key_revoked_or_expired_while_the_server_caches_it_is_refused_at_once(
    world: World,
) -> None:
    """A paid call caches its key for a few seconds (``key_cache_s``); revoking the key, or its
    expiry, still refuses the very next paid call — the hold checks the key — and charges
    nothing."""
    for how in ("revoked", "expired"):
        key_id, key = world.new_key()
        client = world.client(key)
        _ask(client, world.model, max_tokens=4)  # paid: the server now knows the key
        _ask(client, world.model, max_tokens=5, extra_headers={"Idempotency-Key": "i-1"})
        before = world.balance()
        if how == "revoked":
            world.billing.revoke_key(key_id)
        else:
            with world.billing.engine.begin() as conn:
                conn.execute(
                    update(ApiKey)
                    .where(ApiKey.id == key_id)
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
        with pytest.raises(openai.AuthenticationError) as e:
            _ask(client, world.model, max_tokens=4)
        assert e.value.code == "invalid_api_key", how
        with pytest.raises(openai.AuthenticationError):  # nor a stored answer replayed
            _ask(client, world.model, max_tokens=5, extra_headers={"Idempotency-Key": "i-1"})
        assert e.value.response.headers["www-authenticate"] == "Bearer"
        assert world.balance() == before, how
        assert world.billing.open_holds() == [], how


def test_a_key_in_the_query_string_is_refused(world: World) -> None:
    response = httpx.get(f"{world.base_url}/models", params={"api_key": world.key})
    assert response.status_code == 401
    assert "URL" in response.json()["error"]["message"]
    assert world.key not in response.text


def test_unknown_model_and_model_outside_the_keys_allowlist_get_404(world: World) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        _ask(world.client(), "gpt-99", max_tokens=4)
    assert e.value.code == "model_not_found"
    _, key_for_other = world.new_key(models=["other-model"])
    other = world.client(key_for_other)
    with pytest.raises(openai.NotFoundError) as e:
        _ask(other, world.model, max_tokens=4)
    assert e.value.code == "model_not_found"
    assert other.models.list().data == []


def test_a_model_without_a_price_is_not_sold(world: World) -> None:
    with world.billing._write() as conn:  # drop the price row directly: no admin verb for it
        from sqlalchemy import delete

        from avocado_llm.billing.schema import ModelPrice

        conn.execute(delete(ModelPrice))
    with pytest.raises(openai.NotFoundError) as e:
        _ask(world.client(), world.model, max_tokens=4)
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),  # over the plan's cap
        ({"n": 2}, "n"),  # the default plan gives one choice
        ({"logprobs": True}, "logprobs"),  # the default plan gives no logprobs
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ],
)
def test_bad_parameters_get_400_naming_the_parameter(
    world: World, params: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        _ask(world.client(), world.model, **params)
    assert e.value.param == param, e.value.message


def test_prompt_longer_than_the_context_gets_400(world: World) -> None:
    long = [{"role": "user", "content": "seven " * 400}]
    with pytest.raises(openai.BadRequestError) as e:
        world.client().chat.completions.create(model=world.model, messages=long, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    _, key = world.new_key(plan=Plan(max_tokens=4096))
    with pytest.raises(openai.BadRequestError) as e:  # prompt + max_tokens over the context
        _ask(world.client(key), world.model, max_tokens=1000)
    assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"


def test_oversized_body_gets_413_and_unknown_routes_404(world: World) -> None:
    big = [{"role": "user", "content": "x" * 100_000}]
    with pytest.raises(openai.APIStatusError) as e:
        world.client().chat.completions.create(model=world.model, messages=big, max_tokens=4)
    assert e.value.status_code == 413
    headers = {"Authorization": f"Bearer {world.key}"}
    response = httpx.get(f"{world.base_url}/files", headers=headers)
    assert response.status_code == 404 and "error" in response.json()
    response = httpx.get(f"{world.base_url}/chat/completions", headers=headers)
    assert response.status_code == 405 and "error" in response.json()


def test_rate_limit_gets_429_with_retry_after_and_ratelimit_headers(world: World) -> None:
    _, key = world.new_key(rpm=2)
    client = world.client(key)
    raw = client.chat.completions.with_raw_response.create(
        model=world.model, messages=QUESTION, max_tokens=4
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    _ask(client, world.model, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as e:
        _ask(client, world.model, max_tokens=4)
    assert e.value.code == "rate_limit_exceeded"
    headers = e.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")


def test_tokens_per_minute_limit(world: World) -> None:
    _, key = world.new_key(tpm=100)
    client = world.client(key)
    _ask(client, world.model, max_tokens=50)  # ~20 prompt + 50 reserved, unused part refunded
    with pytest.raises(openai.RateLimitError) as e:
        _ask(client, world.model, max_tokens=90)
    assert e.value.code == "rate_limit_exceeded" and e.value.type == "tokens"
    assert "x-ratelimit-limit-tokens" in e.value.response.headers


def test_running_out_of_credit_gets_429_insufficient_quota(world: World) -> None:
    world.billing.create_account("poor", 100)  # 100 µ$: less than one worst case
    _, key = world.new_key(account="poor")
    with pytest.raises(openai.RateLimitError) as e:
        _ask(world.client(key), world.model, max_tokens=100)
    assert e.value.code == "insufficient_quota"
    assert world.balance("poor") == 100 and world.held("poor") == 0
