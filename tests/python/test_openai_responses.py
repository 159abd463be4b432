"""The official ``openai`` SDK's Responses API (``client.responses``) through Shepherd, on every
upstream kind mock-upstream serves: an OpenAI-compatible chat-completions upstream (``gpt-4.1``),
Anthropic (``claude-x``) and Gemini (``gemini-x``), each translated through the canonical form,
and an OpenAI-compatible upstream that offers the Responses API (``gpt-resp``: passed through).
The SDK must parse every response and typed stream event as if OpenAI had sent them; what the
upstream received is checked in its own protocol.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from conftest import CLIENT_KEY

MODELS = ["gpt-4.1", "claude-x", "gemini-x", "gpt-resp"]

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather at a place",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
    "strict": True,
}

CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


@pytest.fixture
def client(gateway):
    with OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30) as c:
        yield c


def _upstream_body(mock_upstream) -> dict:
    """The body of the one request the upstream received."""
    (request,) = mock_upstream.requests()
    return request["body"] if isinstance(request["body"], dict) else json.loads(request["body"])


@pytest.mark.parametrize("model", MODELS)
def test_plain(client, model, reset_mock):
    response = client.responses.create(model=model, instructions="Be brief.", input="Hello responses")
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed"
    assert "Hello responses" in response.output_text
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.instructions == "Be brief."
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    body = json.dumps(_upstream_body(reset_mock))
    assert "Be brief." in body and "Hello responses" in body


@pytest.mark.parametrize("model", MODELS)
def test_stream_events_in_order(client, model):
    events = list(client.responses.create(model=model, input="Stream responses", stream=True))
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert "Stream responses" in text
    (done,) = [event for event in events if event.type == "response.output_text.done"]
    assert done.text == text
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == text
    assert completed.usage.output_tokens > 0
    # Every item is announced before its deltas and closed after them.
    added = types.index("response.output_item.added")
    assert added < types.index("response.output_text.delta") < types.index("response.output_item.done")


@pytest.mark.parametrize("model", MODELS)
def test_function_tools_over_two_turns(client, model):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.responses.create(model=model, input=question, tools=[WEATHER_TOOL])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"location": "Paris"}
    assert call.call_id
    second = client.responses.create(
        model=model,
        tools=[WEATHER_TOOL],
        input=[
            *question,
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"},
        ],
    )
    assert "Sunny, 21C" in second.output_text


@pytest.mark.parametrize("model", MODELS)
def test_streamed_function_call(client, model):
    events = list(
        client.responses.create(
            model=model, input="What is the weather in Paris?", tools=[WEATHER_TOOL], stream=True
        )
    )
    arguments = "".join(
        event.delta for event in events if event.type == "response.function_call_arguments.delta"
    )
    assert json.loads(arguments) == {"location": "Paris"}
    (done,) = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert done.arguments == arguments
    [call] = [item for item in events[-1].response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.arguments == arguments


@pytest.mark.parametrize("model", MODELS)
def test_structured_output_reaches_the_upstream(client, model, reset_mock):
    response = client.responses.create(
        model=model,
        input="Where is the Eiffel tower?",
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}},
    )
    assert response.text.format.type == "json_schema"
    body = _upstream_body(reset_mock)
    if model == "gpt-4.1":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == CITY_SCHEMA
    elif model == "gpt-resp":
        assert body["text"]["format"]["schema"] == CITY_SCHEMA
    elif model == "claude-x":
        assert body["output_config"]["format"]["schema"] == CITY_SCHEMA
    else:
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert body["generationConfig"]["responseJsonSchema"] == CITY_SCHEMA


@pytest.mark.parametrize("model", MODELS)
def test_max_output_tokens_cuts_the_answer(client, model):
    response = client.responses.create(model=model, input="a long story please", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("model", MODELS)
def test_upstream_errors_in_openai_shape(client, model):
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=model, input="hi", extra_headers={"x-mock-status": "429"})


@pytest.mark.parametrize("model", MODELS)
def test_a_broken_stream_ends_with_response_failed(client, model):
    seen: list[str] = []
    try:
        for event in client.responses.create(
            model=model, input="break", stream=True,
            extra_headers={"x-mock-cut-after": "2", "x-mock-chunks": "6"},
        ):
            seen.append(event.type)
    except openai.APIError as error:  # the SDK may raise on the failure event instead
        seen.append(f"raised: {error}")
    assert seen[0] == "response.created"
    # Translated: `response.failed`; passed through: an `error` event (the SDK may raise).
    assert seen[-1] in ("response.failed", "error") or seen[-1].startswith("raised"), seen
    assert "response.completed" not in seen


def test_built_in_tools_are_refused_clearly(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="claude-x", input="hi", tools=[{"type": "web_search"}])
    assert "web_search" in str(raised.value)


@pytest.mark.parametrize("model", MODELS)
def test_previous_response_id_continues_on_every_upstream(client, model, reset_mock):
    # Started on another upstream kind than the one that continues it.
    first = client.responses.create(model="claude-x" if model != "claude-x" else "gemini-x",
                                    input="My name is Ada")
    assert first.store is True
    second = client.responses.create(model=model, input="What is my name?", previous_response_id=first.id)
    if model != "gpt-resp":
        # Passed through, the object is the upstream's: it got the whole conversation instead.
        assert second.previous_response_id == first.id
    assert "What is my name?" in second.output_text
    sent = json.dumps(reset_mock.requests()[-1]["body"])
    assert "My name is Ada" in sent and first.output_text in sent and "What is my name?" in sent
    # Streams are kept too, and continue at once.
    events = list(client.responses.create(model=model, input="Count", previous_response_id=second.id, stream=True))
    third = events[-1].response
    assert third.status == "completed"
    fourth = client.responses.create(model=model, input="Again", previous_response_id=third.id)
    assert fourth.status == "completed"


def test_retrieve_and_delete(client):
    created = client.responses.create(model="gpt-4.1", input="Keep me")
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="gpt-4.1", input="more", previous_response_id=created.id)
    assert "not found" in str(raised.value)


def test_store_false_is_not_kept(client):
    created = client.responses.create(model="gemini-x", input="Forget me", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
