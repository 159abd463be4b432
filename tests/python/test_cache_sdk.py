"""Cached answers replayed to the official SDKs: a stream stored once is replayed as a stream
that the ``openai`` and ``anthropic`` SDKs parse event by event (every OpenAI chunk also
validated against the OpenAPI schema), and a stored stream serves a whole request too.
Models ``cached-gpt`` and ``cached-claude`` have the cache on (see conftest.py).
"""

from __future__ import annotations

import uuid

from anthropic import Anthropic
from openai import OpenAI

from conftest import CLIENT_KEY


def _unique(text: str) -> list[dict]:
    # A fresh question per test run: the gateway lives for the whole session.
    return [{"role": "user", "content": f"{text} ({uuid.uuid4().hex})"}]


def test_openai_stream_replayed_as_a_stream(gateway, mock_upstream, schema):
    client = OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0)
    messages = _unique("Replay this stream")
    runs = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="cached-gpt", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(raw.parse())
        runs.append((raw.headers.get("x-cache"), chunks))
    (first_status, first), (second_status, second) = runs
    assert (first_status, second_status) == ("MISS", "HIT")
    text = lambda chunks: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text(second) == text(first) and "Replay this stream" in text(second)
    assert second[-1].usage.completion_tokens == first[-1].usage.completion_tokens
    assert [c.choices[0].finish_reason for c in second if c.choices and c.choices[0].finish_reason] == ["stop"]
    for i, chunk in enumerate(second):
        schema(chunk.model_dump(mode="json", exclude_unset=True), "CreateChatCompletionStreamResponse", f"replayed chunk {i}")
    chat_calls = [r for r in mock_upstream.requests() if r["path"].endswith("/chat/completions")]
    assert len(chat_calls) == 1

    whole = client.chat.completions.with_raw_response.create(model="cached-gpt", messages=messages)
    assert whole.headers.get("x-cache") == "HIT"
    assert whole.parse().choices[0].message.content == text(first)


def test_anthropic_stream_replayed_as_a_stream(gateway):
    client = Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)
    messages = _unique("Replay for Claude")
    finals = []
    for _ in range(2):
        with client.messages.stream(model="cached-claude", max_tokens=200, messages=messages) as stream:
            pieces = list(stream.text_stream)
            finals.append((pieces, stream.get_final_message()))
    (_, first), (replayed_pieces, second) = finals
    assert replayed_pieces, "the replay is a real stream of text deltas"
    assert second.content[0].text == first.content[0].text
    assert second.stop_reason == first.stop_reason == "end_turn"
    assert second.usage.output_tokens == first.usage.output_tokens
