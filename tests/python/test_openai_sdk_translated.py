"""The official ``openai`` SDK against models Shepherd translates: ``claude-x`` (an Anthropic
upstream) and ``gemini-x`` (a Gemini upstream), both served by mock-upstream. The SDK must parse
every answer and stream as if OpenAI had sent it, tool calls included.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from conftest import CLIENT_KEY

MODELS = ["claude-x", "gemini-x"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


@pytest.fixture
def client(gateway):
    with OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30) as c:
        yield c


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("model", MODELS)
def test_chat(client, model):
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, *_user("Hello translated")],
    )
    choice = completion.choices[0]
    assert "Hello translated" in choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


@pytest.mark.parametrize("model", MODELS)
def test_stream_with_usage(client, model):
    chunks = list(
        client.chat.completions.create(
            model=model, messages=_user("Stream translated"), stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Stream translated" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_call_accumulates(client, model):
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(
        model=model, messages=_user("What is the weather in Paris?"), tools=[WEATHER_TOOL], stream=True
    ):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": None, "args": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["args"] += call.function.arguments
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["args"]) == {"location": "Paris"}


@pytest.mark.parametrize("model", MODELS)
def test_tool_round_trip(client, model):
    first = client.chat.completions.create(
        model=model, messages=_user("What is the weather in Paris?"), tools=[WEATHER_TOOL]
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = message.tool_calls
    second = client.chat.completions.create(
        model=model,
        tools=[WEATHER_TOOL],
        messages=[
            *_user("What is the weather in Paris?"),
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21C"},
        ],
    )
    assert "Sunny, 21C" in second.choices[0].message.content


@pytest.mark.parametrize("model", MODELS)
def test_length_finish(client, model):
    completion = client.chat.completions.create(model=model, messages=_user("a long story please"), max_tokens=2)
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", MODELS)
def test_errors(client, model):
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=model, messages=_user("hi"), extra_headers={"x-mock-status": "429"})
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=model, messages=_user("hi"), extra_headers={"x-mock-status": "529"})
    assert raised.value.status_code == 503


@pytest.mark.parametrize("model", MODELS)
def test_stream_broken_midway_raises(client, model):
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model=model, messages=_user("break"), stream=True,
            extra_headers={"x-mock-cut-after": "2", "x-mock-chunks": "6"},
        ):
            pass


def test_several_choices_from_gemini(client):
    completion = client.chat.completions.create(model="gemini-x", n=2, messages=_user("Two please"))
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert all("Two please" in choice.message.content for choice in completion.choices)
    texts = {0: "", 1: ""}
    for chunk in client.chat.completions.create(
        model="gemini-x", n=2, stream=True, messages=_user("Two please")
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts[0] == texts[1] == completion.choices[0].message.content
