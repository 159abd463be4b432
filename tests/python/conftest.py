"""Session fixtures for Shepherd's Python black-box tests.

Starts ``mock-upstream`` and ``shepherd serve`` once per session (binaries from
``$SHEPHERD_TARGET_DIR``, default ``<repo>/target/debug``; build them with
``cargo build --bins``), resets the mock before every test, and validates JSON
against OpenAI's OpenAPI description (``$OPENAI_OPENAPI_SPEC``, default
``<repo>/../shared/specs/openai-openapi.yaml``).
"""

from __future__ import annotations

import copy
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_SPEC = REPO_ROOT.parent / "shared" / "specs" / "openai-openapi.yaml"

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

CLIENT_KEY = "sk-shepherd-sdk-test"
LIMITED_KEY = "sk-shepherd-limited"
UPSTREAM_KEY = "sk-upstream-secret"

# The server-wide first-byte timeout. Tests that want a 504 ask the mock for a
# latency above it (see FIRST_BYTE_TIMEOUT_S); keep it short so the suite is fast.
FIRST_BYTE_TIMEOUT_S = 2

CONFIG_TEMPLATE = """\
server:
  listen: 127.0.0.1:0
  max_body: 1MiB
  timeouts: {{connect: 2s, first_byte: {first_byte}s, idle: 5s, total: 60s}}
providers:
  up: {{kind: openai, base_url: '{upstream}', api_keys: ['{upstream_key}']}}
  anth: {{kind: anthropic, base_url: '{upstream_root}', api_keys: ['{upstream_key}']}}
  gem: {{kind: gemini, base_url: '{upstream_root}', api_keys: ['{upstream_key}']}}
  resp: {{kind: openai, base_url: '{upstream}', api_keys: ['{upstream_key}'], responses: true}}
  builtin: {{kind: mock}}
models:
  gpt-4.1:
    deployments: [{{provider: up, model: upstream-gpt-4.1}}]
  text-embedding-3-small:
    deployments: [{{provider: up}}]
  local-mock:
    deployments: [{{provider: builtin, model: mock-1}}]
  claude-x:
    deployments: [{{provider: anth, model: claude-sonnet-4-5}}]
  gemini-x:
    deployments: [{{provider: gem, model: gemini-2.5-flash}}]
  gpt-resp:
    deployments: [{{provider: resp, model: upstream-gpt-resp}}]
  cached-gpt:
    deployments: [{{provider: up, model: upstream-gpt-4.1}}]
    cache: {{ttl: 1h}}
  cached-claude:
    deployments: [{{provider: anth, model: claude-sonnet-4-5}}]
    cache: {{ttl: 1h}}
keys:
  - {{name: sdk-tests, key: {client_key}}}
  - {{name: limited, key: {limited_key}, models: ['local-*']}}
# One attempt, and breakers that never open: these tests look at what one upstream answer
# becomes (the Rust suite tests retries and breakers).
retry: {{attempts: 1}}
circuit: {{failures: 1000000, key_cooldown: 0s}}
telemetry: {{access_log: json, log_level: info}}
"""


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


class _Proc:
    """A child process whose output stream is drained line by line in a thread.

    Lines go to a queue until ``wait_for`` has seen what it waits for, and are kept
    (bounded) in ``lines`` for failure diagnostics; the pipe never fills.
    """

    def __init__(self, name: str, argv: list[str], stream: str) -> None:
        self.name = name
        self.argv = argv
        kwargs: dict[str, Any] = {"stdin": subprocess.DEVNULL, "text": True, "bufsize": 1}
        if stream == "stdout":
            kwargs.update(stdout=subprocess.PIPE, stderr=None)
        else:
            kwargs.update(stdout=None, stderr=subprocess.PIPE)
        self.popen = subprocess.Popen(argv, **kwargs)
        self.lines: list[str] = []
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        pipe = self.popen.stdout if stream == "stdout" else self.popen.stderr
        self._thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self._thread.start()

    def _drain(self, pipe) -> None:
        for line in pipe:
            line = line.rstrip("\n")
            if len(self.lines) < 10_000:
                self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], Any], timeout: float) -> Any:
        """Returns the first truthy ``predicate(line)``; fails on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                pytest.fail(f"{self.name} not ready within {timeout}s; output:\n{self.tail()}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                rc = self.popen.wait()
                pytest.fail(f"{self.name} exited (rc={rc}) before ready; output:\n{self.tail()}")
            found = predicate(line)
            if found:
                return found

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        self._thread.join(timeout=2)
        return self.popen.returncode


def _binary(name: str) -> str:
    target = Path(os.environ.get("SHEPHERD_TARGET_DIR", REPO_ROOT / "target" / "debug"))
    path = target / name
    if not path.is_file():
        pytest.fail(
            f"binary {path} not found: run `cargo build --bins` in {REPO_ROOT} "
            "or set SHEPHERD_TARGET_DIR"
        )
    return str(path)


@dataclass(frozen=True)
class Gateway:
    addr: str  # host:port

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def v1(self) -> str:
        return f"http://{self.addr}/v1"


@dataclass(frozen=True)
class MockUpstream:
    addr: str

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def v1(self) -> str:
        return f"http://{self.addr}/v1"

    def requests(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/_mock/requests", timeout=10)
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_mock/reset", timeout=10).raise_for_status()

    def stats(self) -> Any:
        r = httpx.get(f"{self.url}/_mock/stats", timeout=10)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[MockUpstream]:
    proc = _Proc("mock-upstream", [_binary("mock-upstream"), "--listen", "127.0.0.1:0"], "stderr")
    try:
        addr = proc.wait_for(
            lambda line: (m := re.search(r"listening on (\S+:\d+)", line)) and m.group(1),
            STARTUP_TIMEOUT_S,
        )
        yield MockUpstream(addr)
    finally:
        proc.stop()


def _ready_addr(line: str) -> str | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("message") == "ready":
        return event.get("addr")
    return None


@pytest.fixture(scope="session")
def gateway(mock_upstream: MockUpstream, tmp_path_factory) -> Iterator[Gateway]:
    config = tmp_path_factory.mktemp("shepherd") / "shepherd.yaml"
    config.write_text(
        CONFIG_TEMPLATE.format(
            upstream=mock_upstream.v1,
            upstream_root=mock_upstream.url,
            upstream_key=UPSTREAM_KEY,
            client_key=CLIENT_KEY,
            limited_key=LIMITED_KEY,
            first_byte=FIRST_BYTE_TIMEOUT_S,
        )
    )
    proc = _Proc("shepherd", [_binary("shepherd"), "serve", "--config", str(config)], "stdout")
    try:
        addr = proc.wait_for(_ready_addr, STARTUP_TIMEOUT_S)
        gw = Gateway(addr)
        # Belt and braces: the ready line should mean /readyz answers.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{gw.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"shepherd /readyz not 200 within {STARTUP_TIMEOUT_S}s:\n{proc.tail()}")
            time.sleep(0.05)
        yield gw
    finally:
        rc = proc.stop()
        # A clean SIGTERM shutdown exits 0; report otherwise, but do not mask test errors.
        if rc not in (0, None):
            print(f"\nshepherd exited with {rc}; output tail:\n{proc.tail()}")


@pytest.fixture(autouse=True)
def reset_mock(mock_upstream: MockUpstream) -> MockUpstream:
    """Resets the mock's recorded requests (and stats) before every test."""
    mock_upstream.reset()
    return mock_upstream


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    """Raw HTTP client on the gateway, authenticated with the full-access key."""
    with httpx.Client(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        timeout=30,
    ) as client:
        yield client


# --------------------------------------------------------------------------------------
# OpenAPI schema validation
# --------------------------------------------------------------------------------------


def spec_path() -> Path:
    override = os.environ.get("OPENAI_OPENAPI_SPEC")
    return Path(override) if override else DEFAULT_SPEC


def _upgrade_nullable(node: Any) -> Any:
    """Rewrites OpenAPI 3.0 ``nullable: true`` into JSON Schema 2020-12.

    SPEC ADJUSTMENT (the only global one). The spec declares ``openapi: 3.1.0`` but
    still carries ~100 OpenAPI-3.0-style ``nullable: true`` keywords, which JSON
    Schema 2020-12 ignores. Read literally, ``CreateChatCompletionStreamResponse``
    then forbids ``"finish_reason": null`` and ``"usage": null`` -- values that
    the same schema's descriptions say every non-final chunk carries, and that
    OpenAI's API sends. We honour the author's explicit intent by rewriting
    ``{..., nullable: true}`` to ``{anyOf: [{...}, {type: "null"}]}``; nothing is
    loosened where the spec does not say ``nullable: true`` (``nullable: false``
    is dropped as the no-op it is). Within the schemas this suite validates, it
    changes exactly five places, all in ``CreateChatCompletionStreamResponse``:
    ``choices[].logprobs`` (and its ``content``/``refusal``),
    ``choices[].finish_reason`` and ``usage``.
    """
    if isinstance(node, list):
        return [_upgrade_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _upgrade_nullable(v) for k, v in node.items()}
    if "nullable" in out and isinstance(out["nullable"], bool):
        nullable = out.pop("nullable")
        if nullable:
            # Annotations stay outside so the error messages still read well.
            outer = {k: out.pop(k) for k in ("description", "title") if k in out}
            outer["anyOf"] = [out, {"type": "null"}]
            return outer
    return out


@pytest.fixture(scope="session")
def openapi_spec() -> dict[str, Any]:
    path = spec_path()
    if not path.is_file():
        pytest.fail(
            f"OpenAI OpenAPI spec not found at {path}. Put openai-openapi.yaml in "
            f"{DEFAULT_SPEC.parent} or set OPENAI_OPENAPI_SPEC to its path."
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as f:
        spec = yaml.load(f, Loader=loader)
    if not isinstance(spec, dict) or "schemas" not in spec.get("components", {}):
        pytest.fail(f"{path} does not look like an OpenAPI document (no components.schemas)")
    return spec


class SchemaValidator:
    """Validates JSON instances against ``#/components/schemas/<name>`` of the spec."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from jsonschema import Draft202012Validator

        self._cls = Draft202012Validator
        self._components = _upgrade_nullable(copy.deepcopy(spec["components"]))
        self._validators: dict[str, Any] = {}

    def names(self) -> set[str]:
        return set(self._components["schemas"])

    def raw_schema(self, name: str) -> Any:
        """The (nullable-upgraded) component schema, for building test-local variants."""
        return self._components["schemas"][name]

    def register(self, name: str, schema: Any) -> None:
        """Adds a test-local schema under ``#/components/schemas/<name>``."""
        self._components["schemas"][name] = schema
        self._validators.clear()

    def validator(self, name: str):
        if name not in self._validators:
            if name not in self._components["schemas"]:
                pytest.fail(f"schema {name!r} is not in the OpenAPI spec's components.schemas")
            root = {"$ref": f"#/components/schemas/{name}", "components": self._components}
            self._cls.check_schema(root)
            self._validators[name] = self._cls(root)
        return self._validators[name]

    def errors(self, instance: Any, name: str) -> list[str]:
        from jsonschema.exceptions import best_match

        errs = list(self.validator(name).iter_errors(instance))
        if not errs:
            return []
        out = []
        best = best_match(errs)
        for e in [best] + [e for e in errs if e is not best]:
            path = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
            schema_path = "/".join(str(p) for p in e.absolute_schema_path)
            msg = f"at {path}: {e.message} (schema path: {schema_path})"
            # anyOf/oneOf failures: show the sub-errors, they carry the real reason.
            for sub in sorted(e.context or [], key=lambda s: list(s.absolute_path)):
                sp = "$" + "".join(
                    f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in sub.absolute_path
                )
                msg += f"\n      - at {sp}: {sub.message}"
            out.append(msg)
        return out

    def __call__(self, instance: Any, name: str, what: str = "") -> None:
        errs = self.errors(instance, name)
        if errs:
            shown = json.dumps(instance, indent=None)
            if len(shown) > 2000:
                shown = shown[:2000] + "..."
            pytest.fail(
                f"{what or 'instance'} does not validate against {name}:\n  "
                + "\n  ".join(errs)
                + f"\ninstance: {shown}",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def schema(openapi_spec: dict[str, Any]) -> SchemaValidator:
    """``schema(instance, "CreateChatCompletionResponse")`` fails the test on mismatch."""
    return SchemaValidator(openapi_spec)


# --------------------------------------------------------------------------------------
# SSE helpers (raw HTTP)
# --------------------------------------------------------------------------------------


@dataclass
class SSEStream:
    status_code: int
    headers: httpx.Headers
    events: list[Any]  # parsed JSON of each `data:` event, excluding [DONE]
    done: bool  # whether `data: [DONE]` was received (and was last)
    raw: str


def parse_sse(text: str) -> tuple[list[Any], bool]:
    """Splits an SSE body into JSON ``data:`` payloads; returns (events, saw_done_last)."""
    events: list[Any] = []
    done = False
    for block in re.split(r"\r?\n\r?\n", text):
        data_lines = [
            line[5:].removeprefix(" ")
            for line in re.split(r"\r?\n", block)
            if line.startswith("data:")
        ]
        if not data_lines:
            continue
        data = "\n".join(data_lines)
        if done:
            raise AssertionError(f"SSE event after [DONE]: {data!r}")
        if data == "[DONE]":
            done = True
            continue
        events.append(json.loads(data))
    return events, done


def sse_post(client: httpx.Client, path: str, body: dict[str, Any], **kwargs) -> SSEStream:
    """POSTs and reads the whole SSE response (tolerating an aborted connection)."""
    with client.stream("POST", path, json=body, **kwargs) as r:
        chunks = []
        try:
            for piece in r.iter_text():
                chunks.append(piece)
        except httpx.HTTPError:
            # A cut stream may end with a truncated chunked body; what arrived counts.
            pass
        text = "".join(chunks)
    events, done = parse_sse(text)
    return SSEStream(r.status_code, r.headers, events, done, text)
