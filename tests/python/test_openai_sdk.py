"""Shepherd driven by the official ``openai`` Python SDK.

The gateway fronts mock-upstream (models ``gpt-4.1`` -> ``upstream-gpt-4.1`` and
``text-embedding-3-small``) and its built-in mock provider (``local-mock``). The
mock answers ``"Mock reply to: <last message>"`` and, when ``tools`` are given and
the last message mentions "weather", calls the first tool with
``{"location":"Paris"}``.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from conftest import CLIENT_KEY, LIMITED_KEY, UPSTREAM_KEY

EMBEDDING_DIMENSIONS = 8  # mock-upstream's default

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def _client(gateway, key: str = CLIENT_KEY, **kwargs) -> OpenAI:
    kwargs.setdefault("timeout", 30)
    return OpenAI(base_url=gateway.v1, api_key=key, **kwargs)


@pytest.fixture
def client(gateway):
    with _client(gateway) as c:
        yield c


@pytest.fixture
def strict_client(gateway):
    """No retries, so error tests see the first answer and the upstream one request."""
    with _client(gateway, max_retries=0) as c:
        yield c


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------------------
# Chat completions
# --------------------------------------------------------------------------------------


def test_chat_non_stream(client, schema):
    resp = client.chat.completions.create(model="gpt-4.1", messages=_user("hello gateway"))
    assert resp.object == "chat.completion"
    assert resp.model == "upstream-gpt-4.1"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Mock reply to: hello gateway"
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    schema(resp.to_dict(mode="json"), "CreateChatCompletionResponse", "SDK-parsed chat response")


def test_chat_raw_response_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=_user("headers please")
    )
    assert raw.status_code == 200
    request_id = raw.headers.get("x-request-id")
    assert request_id, f"no x-request-id in {dict(raw.headers)}"
    deployment = raw.headers.get("x-shepherd-deployment")
    assert deployment, f"no x-shepherd-deployment in {dict(raw.headers)}"
    assert "upstream-gpt-4.1" in deployment
    resp = raw.parse()
    assert resp.choices[0].message.content == "Mock reply to: headers please"

    # Each request gets its own id.
    again = client.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=_user("headers please")
    )
    assert again.headers.get("x-request-id") not in (None, request_id)


def test_chat_stream_with_usage(client, schema):
    stream = client.chat.completions.create(
        model="gpt-4.1",
        messages=_user("stream to me"),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-chunks": "5"},
    )
    content = []
    finish_reasons = []
    usage_chunks = []
    ids = set()
    n = 0
    for chunk in stream:
        n += 1
        schema(chunk.to_dict(mode="json"), "CreateChatCompletionStreamResponse", f"chunk {n}")
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == "upstream-gpt-4.1"
        ids.add(chunk.id)
        for choice in chunk.choices:
            if choice.delta.content:
                content.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
        if chunk.usage is not None:
            usage_chunks.append(chunk)
    assert "".join(content) == "Mock reply to: stream to me"
    assert finish_reasons == ["stop"]
    assert len(ids) == 1, f"chunk ids differ: {ids}"
    assert len(usage_chunks) == 1, "expected exactly one usage chunk"
    last = usage_chunks[0]
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_chat_stream_without_usage(client):
    stream = client.chat.completions.create(
        model="gpt-4.1", messages=_user("no usage"), stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Mock reply to: no usage"
    )
    assert all(c.usage is None for c in chunks)


def test_local_mock_chat(client):
    resp = client.chat.completions.create(model="local-mock", messages=_user("hi builtin"))
    assert resp.model == "mock-1"
    assert "hi builtin" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model="local-mock",
        messages=_user("hi builtin"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == resp.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


# --------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------


def test_tool_call_non_stream(client):
    resp = client.chat.completions.create(
        model="gpt-4.1",
        messages=_user("What's the weather in Paris?"),
        tools=[WEATHER_TOOL],
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}


def test_tool_call_stream_reassembled(client, schema):
    stream = client.chat.completions.create(
        model="gpt-4.1",
        messages=_user("What's the weather in Paris?"),
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls: dict[int, dict] = {}
    finish_reasons = []
    argument_pieces = 0
    for n, chunk in enumerate(stream, 1):
        schema(chunk.to_dict(mode="json"), "CreateChatCompletionStreamResponse", f"chunk {n}")
        for choice in chunk.choices:
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
            for tc in choice.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function:
                    if tc.function.name:
                        slot["name"] += tc.function.name
                    if tc.function.arguments:
                        slot["arguments"] += tc.function.arguments
                        argument_pieces += 1
    assert finish_reasons == ["tool_calls"]
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"]
    assert call["name"] == "get_weather"
    assert argument_pieces > 1, "arguments were expected to arrive in several deltas"
    assert call["arguments"] == '{"location":"Paris"}'
    assert json.loads(call["arguments"]) == {"location": "Paris"}


# --------------------------------------------------------------------------------------
# Legacy completions, embeddings, models
# --------------------------------------------------------------------------------------


def test_completions_non_stream(client):
    resp = client.completions.create(model="gpt-4.1", prompt="complete me")
    assert resp.object == "text_completion"
    assert resp.model == "upstream-gpt-4.1"
    assert resp.choices[0].text == "Mock reply to: complete me"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage and resp.usage.total_tokens > 0


def test_completions_stream(client):
    stream = client.completions.create(
        model="gpt-4.1",
        prompt="complete me",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Mock reply to: complete me"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_embeddings_default_base64(client, reset_mock):
    inputs = ["first text", "second text"]
    resp = client.embeddings.create(model="text-embedding-3-small", input=inputs)
    assert resp.object == "list"
    assert [d.index for d in resp.data] == [0, 1]
    for d in resp.data:
        # The SDK requested base64 and decoded it into floats.
        assert isinstance(d.embedding, list)
        assert len(d.embedding) == EMBEDDING_DIMENSIONS
        assert all(isinstance(x, float) for x in d.embedding)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0

    (req,) = [r for r in reset_mock.requests() if r["path"].endswith("/embeddings")]
    assert json.loads(req["body"])["encoding_format"] == "base64"

    # Same inputs as floats give the same vectors (up to float32 precision).
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=inputs, encoding_format="float"
    )
    for b64, fl in zip(resp.data, floats.data):
        assert len(fl.embedding) == EMBEDDING_DIMENSIONS
        assert fl.embedding == pytest.approx(b64.embedding, rel=1e-6, abs=1e-6)


def test_embeddings_float(client):
    resp = client.embeddings.create(
        model="text-embedding-3-small", input="just one", encoding_format="float"
    )
    assert len(resp.data) == 1
    assert len(resp.data[0].embedding) == EMBEDDING_DIMENSIONS
    assert resp.model  # echoed by the upstream


def test_models_list_full_key(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == sorted(["gpt-4.1", "text-embedding-3-small", "local-mock", "claude-x", "gemini-x", "gpt-resp", "cached-gpt", "cached-claude"])


def test_models_list_limited_key(gateway):
    with _client(gateway, LIMITED_KEY) as limited:
        models = list(limited.models.list())
    assert [m.id for m in models] == ["local-mock"]
    assert models[0].object == "model"


def test_limited_key_can_use_allowed_model(gateway):
    with _client(gateway, LIMITED_KEY, max_retries=0) as limited:
        resp = limited.chat.completions.create(model="local-mock", messages=_user("ok?"))
    assert resp.choices[0].message.content


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def _assert_error_shape(exc: openai.APIStatusError, status: int) -> dict:
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert err["message"]
    assert exc.response.headers.get("x-request-id")
    return err


def test_error_bad_key(gateway):
    with _client(gateway, "sk-wrong-key", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as ei:
            bad.chat.completions.create(model="gpt-4.1", messages=_user("x"))
    _assert_error_shape(ei.value, 401)


def test_error_model_not_allowed(gateway, reset_mock):
    with _client(gateway, LIMITED_KEY, max_retries=0) as limited:
        with pytest.raises(openai.PermissionDeniedError) as ei:
            limited.chat.completions.create(model="gpt-4.1", messages=_user("x"))
    err = _assert_error_shape(ei.value, 403)
    assert err["param"] == "model"
    assert reset_mock.requests() == [], "a denied request must not reach the upstream"


def test_error_unknown_model(strict_client):
    with pytest.raises(openai.NotFoundError) as ei:
        strict_client.chat.completions.create(model="no-such-model", messages=_user("x"))
    err = _assert_error_shape(ei.value, 404)
    assert "no-such-model" in err["message"]


def test_error_bad_request(strict_client, reset_mock):
    with pytest.raises(openai.BadRequestError) as ei:
        # `messages` is required.
        strict_client.chat.completions.create(model="gpt-4.1", messages=None)  # type: ignore[arg-type]
    err = _assert_error_shape(ei.value, 400)
    assert err["type"] == "invalid_request_error"


def test_error_upstream_500(strict_client, reset_mock):
    with pytest.raises(openai.InternalServerError) as ei:
        strict_client.chat.completions.create(
            model="gpt-4.1", messages=_user("x"), extra_headers={"x-mock-status": "500"}
        )
    assert isinstance(ei.value, openai.APIStatusError)
    _assert_error_shape(ei.value, 500)
    assert len(reset_mock.requests()) == 1


def test_error_mid_stream_cut(strict_client, reset_mock):
    stream = strict_client.chat.completions.create(
        model="gpt-4.1",
        messages=_user("this stream will be cut"),
        stream=True,
        extra_headers={"x-mock-cut-after": "2", "x-mock-chunks": "6"},
    )
    seen = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in stream:
            seen.append(chunk)
    # The SDK raises a plain APIError (not a status error: the status was 200).
    assert not isinstance(ei.value, openai.APIStatusError)
    assert ei.value.message
    assert isinstance(ei.value.body, dict) and ei.value.body.get("message")
    assert seen, "chunks before the cut should have been delivered"
    assert all(c.choices[0].finish_reason != "stop" for c in seen if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in seen if c.choices) != (
        "Mock reply to: this stream will be cut"
    )


# --------------------------------------------------------------------------------------
# Upstream credentials
# --------------------------------------------------------------------------------------


def test_upstream_sees_provider_key_not_client_key(client, reset_mock):
    client.chat.completions.create(model="gpt-4.1", messages=_user("who am i"))
    client.embeddings.create(model="text-embedding-3-small", input="who am i")
    list(
        client.chat.completions.create(
            model="gpt-4.1", messages=_user("who am i"), stream=True
        )
    )
    requests = reset_mock.requests()
    assert len(requests) == 3, requests
    for req in requests:
        headers = {k.lower(): v for k, v in req["headers"].items()}
        assert headers.get("authorization") == f"Bearer {UPSTREAM_KEY}", headers
        dump = json.dumps(req)
        assert CLIENT_KEY not in dump, f"client key leaked upstream: {req}"
    chat = json.loads(requests[0]["body"])
    assert chat["model"] == "upstream-gpt-4.1", "the deployment's model name goes upstream"


def test_models_retrieve(client):
    model = client.models.retrieve("gpt-4.1")
    assert model.id == "gpt-4.1" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
