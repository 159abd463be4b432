"""The official `openai` SDK over HTTPS: the gateway serves a certificate from a CA made in the
test (`trustme`), the SDK trusts only that CA (through its httpx client), and completions work,
streamed too; a client that does not trust the CA is refused at the handshake."""

from __future__ import annotations

import ssl
import time
from typing import Iterator

import httpx
import openai
import pytest
import trustme

from conftest import CLIENT_KEY, STARTUP_TIMEOUT_S, UPSTREAM_KEY, MockUpstream, _binary, _Proc, _ready_addr

CONFIG = """\
server:
  listen: 127.0.0.1:0
  tls: {{cert: '{cert}', key: '{key}'}}
providers:
  up: {{kind: openai, base_url: '{upstream}', api_keys: ['{upstream_key}']}}
models:
  mock-gpt: {{deployments: [{{provider: up, model: mock-gpt-1}}]}}
keys: [{{name: sdk, key: {client_key}}}]
"""


@pytest.fixture(scope="module")
def https_gateway(mock_upstream: MockUpstream, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(base URL, CA bundle path) of a gateway serving HTTPS."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_path = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_path))
    config = folder / "shepherd.yaml"
    config.write_text(CONFIG.format(cert=cert, key=key, upstream=mock_upstream.v1,
                                    upstream_key=UPSTREAM_KEY, client_key=CLIENT_KEY))
    proc = _Proc("shepherd-tls", [_binary("shepherd"), "serve", "--config", str(config)], "stdout")
    try:
        addr = proc.wait_for(_ready_addr, STARTUP_TIMEOUT_S)
        port = addr.rsplit(":", 1)[1]
        base = f"https://localhost:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        context = ssl.create_default_context(cafile=str(ca_path))
        while httpx.get(f"{base}/readyz", verify=context, timeout=2).status_code != 200:
            assert time.monotonic() < deadline, proc.tail()
            time.sleep(0.05)
        yield base, str(ca_path)
    finally:
        proc.stop()


def sdk(base: str, ca_path: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=CLIENT_KEY, max_retries=0,
                         http_client=httpx.Client(verify=ssl.create_default_context(cafile=ca_path)))


def test_completion_and_stream_over_https(https_gateway):
    base, ca_path = https_gateway
    client = sdk(base, ca_path)
    completion = client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hello over TLS"}])
    assert completion.choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="mock-gpt", stream=True, messages=[{"role": "user", "content": "stream over TLS"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, chunks
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "stop"


def test_a_client_that_does_not_trust_the_ca_is_refused(https_gateway):
    base, _ = https_gateway
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "hi"}])


def test_plain_http_on_the_tls_port_gets_no_answer(https_gateway):
    base, _ = https_gateway
    with pytest.raises(httpx.HTTPError):
        httpx.get(base.replace("https://", "http://") + "/healthz", timeout=5)
