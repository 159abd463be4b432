"""Shepherd's ``/v1/messages`` driven by the official ``anthropic`` Python SDK.

The same SDK calls go to three models: ``claude-x`` (an Anthropic upstream: bytes pass
through), ``gpt-4.1`` (an OpenAI-compatible upstream) and ``gemini-x`` (a Gemini upstream),
both translated by Shepherd. mock-upstream answers ``"Mock reply to: <last user text>"``, and
calls the first tool with ``{"location": "Paris"}`` when the last message mentions the weather.
"""

from __future__ import annotations

import anthropic
import pytest
from anthropic import Anthropic

from conftest import CLIENT_KEY, UPSTREAM_KEY

MODELS = ["claude-x", "gpt-4.1", "gemini-x"]

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@pytest.fixture
def client(gateway):
    # The SDK appends /v1/messages to the base URL; no retries so error tests see one answer.
    with Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0, timeout=30) as c:
        yield c


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("model", MODELS)
def test_message(client, model):
    message = client.messages.create(
        model=model, max_tokens=256, system="Be brief.", messages=_user("Hello from the SDK")
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    [block] = message.content
    assert block.type == "text" and "Hello from the SDK" in block.text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream_text(client, model):
    with client.messages.stream(
        model=model, max_tokens=256, messages=_user("Stream to the SDK")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 2, pieces
    assert "".join(pieces) == final.content[0].text
    assert "Stream to the SDK" in final.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream_events_in_order(client, model):
    events = list(
        client.messages.create(
            model=model, max_tokens=256, messages=_user("Raw events please"), stream=True
        )
    )
    kinds = [e.type for e in events if e.type != "ping"]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    assert set(kinds[2:-3]) == {"content_block_delta"}


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_streamed(client, model):
    with client.messages.stream(
        model=model,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=_user("What is the weather in Paris?"),
    ) as stream:
        json_deltas = [e for e in stream if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [call] = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather"
    assert call.input == {"location": "Paris"}
    assert call.id
    assert json_deltas, "arguments arrive as input_json_delta events"


@pytest.mark.parametrize("model", MODELS)
def test_tool_result_round_trip(client, model, mock_upstream):
    first = client.messages.create(
        model=model,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=_user("What is the weather in Paris?"),
    )
    [call] = [b for b in first.content if b.type == "tool_use"]
    answer = client.messages.create(
        model=model,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21C"}],
            },
        ],
    )
    assert answer.stop_reason == "end_turn"
    assert "Sunny, 21C" in answer.content[0].text


@pytest.mark.parametrize("model", MODELS)
def test_max_tokens_stop_reason(client, model):
    message = client.messages.create(
        model=model, max_tokens=2, messages=_user("Tell me a very long story")
    )
    assert message.stop_reason == "max_tokens"
    assert len(message.content[0].text.split()) == 2


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "status,error",
    [
        (400, anthropic.BadRequestError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, getattr(anthropic, "OverloadedError", anthropic.InternalServerError)),
    ],
)
def test_upstream_errors_raise_the_sdk_error(client, model, status, error):
    with pytest.raises(error) as raised:
        client.messages.create(
            model=model,
            max_tokens=16,
            messages=_user("hi"),
            extra_headers={"x-mock-status": str(status)},
        )
    assert raised.value.status_code == status
    assert raised.value.body["type"] == "error"


@pytest.mark.parametrize("model", MODELS)
def test_refused_upstream_key_is_not_the_clients_fault(client, model):
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(
            model=model,
            max_tokens=16,
            messages=_user("hi"),
            extra_headers={"x-mock-status": "401", "x-mock-echo-key": "1"},
        )
    assert raised.value.status_code == 502
    assert UPSTREAM_KEY not in str(raised.value.body)


@pytest.mark.parametrize("model", MODELS)
def test_stream_broken_midway_raises(client, model):
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(
            model=model,
            max_tokens=256,
            messages=_user("break please"),
            extra_headers={"x-mock-stream-error-after": "2", "x-mock-chunks": "6"},
        ) as stream:
            for _ in stream:
                pass


def test_bad_client_key(gateway):
    with Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            bad.messages.create(model="claude-x", max_tokens=16, messages=_user("hi"))
    assert raised.value.body["error"]["type"] == "authentication_error"


def test_unknown_model(client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=16, messages=_user("hi"))


def test_models_list_and_retrieve(client):
    page = client.models.list()
    ids = [model.id for model in page.data]
    assert {"claude-x", "gpt-4.1", "gemini-x"} <= set(ids)
    assert all(model.type == "model" and model.display_name for model in page.data)
    assert page.data[0].created_at.year >= 2026
    # The SDK's auto-paging walks every page with `after_id`.
    walked = [model.id for model in client.models.list(limit=2)]
    assert walked == ids
    model = client.models.retrieve("claude-x")
    assert model.id == "claude-x" and model.type == "model"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize("model", MODELS + ["local-mock"])
def test_count_tokens(client, model):
    counted = client.messages.count_tokens(
        model=model,
        system="Be brief.",
        messages=_user("How many tokens is this question?"),
        tools=[WEATHER_TOOL],
    )
    assert counted.input_tokens > 0
    raw = client.messages.with_raw_response.count_tokens(
        model=model, messages=_user("How many tokens is this question?")
    )
    how = raw.headers["x-shepherd-token-count"]
    assert how == ("tiktoken/o200k_base" if model in ("gpt-4.1", "local-mock") else "upstream")
