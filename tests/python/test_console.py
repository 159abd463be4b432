"""The console at /ui, end to end in a real browser (tests/console/console.test.mjs, run with
Node and playwright-core driving Debian's chromium; scripts/test installs both when missing).

The gateway here has its own mock-upstream (the browser test makes it fail) and its own ledger,
with a master key and breakers that open after two failures. Screenshots of each page land in
target/console-screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, STARTUP_TIMEOUT_S, _binary, _Proc, _ready_addr

MASTER_KEY = "sk-console-master-test"
MODEL = "gpt-console"
CONSOLE_TESTS = REPO_ROOT / "tests" / "console"
SCREENSHOTS = REPO_ROOT / "target" / "console-screenshots"

CONFIG = """\
server:
  listen: 127.0.0.1:0
  timeouts: {{connect: 2s, first_byte: 5s, idle: 5s, total: 30s}}
state: {{database: 'sqlite://{ledger}'}}
admin: {{master_key: {master}, key_secret: console-hash-secret-0123456789}}
providers:
  console-up: {{kind: openai, base_url: '{upstream}', api_keys: ['sk-console-upstream']}}
models:
  {model}:
    deployments: [{{provider: console-up, model: upstream-console}}]
    price: {{input: 2.0, output: 8.0}}
retry: {{attempts: 1}}
circuit: {{failures: 2, cooldown: 60s}}
telemetry: {{access_log: json, log_level: info}}
"""


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def console_gateway(tmp_path_factory):
    mock = _Proc("mock-upstream (console)", [_binary("mock-upstream"), "--listen", "127.0.0.1:0"], "stderr")
    gateway = None
    try:
        mock_addr = mock.wait_for(
            lambda line: (m := re.search(r"listening on (\S+:\d+)", line)) and m.group(1),
            STARTUP_TIMEOUT_S,
        )
        workdir = tmp_path_factory.mktemp("console")
        config = workdir / "shepherd.yaml"
        config.write_text(CONFIG.format(ledger=workdir / "ledger.db", master=MASTER_KEY,
                                        upstream=f"http://{mock_addr}/v1", model=MODEL))
        gateway = _Proc("shepherd (console)", [_binary("shepherd"), "serve", "--config", str(config)], "stdout")
        addr = gateway.wait_for(_ready_addr, STARTUP_TIMEOUT_S)
        yield f"http://{addr}", f"http://{mock_addr}", gateway
    finally:
        if gateway is not None:
            gateway.stop()
        mock.stop()


def test_the_console_in_a_real_browser(console_gateway):
    chromium = _chromium()
    node = shutil.which("node")
    if not chromium or not node or not (CONSOLE_TESTS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("the console test needs node, chromium and tests/console/node_modules "
                    "(scripts/test installs them)")
    gateway_url, mock_url, gateway = console_gateway
    env = {**os.environ, "GATEWAY_URL": gateway_url, "MOCK_URL": mock_url, "MASTER_KEY": MASTER_KEY,
           "MODEL": MODEL, "SCREENSHOTS": str(SCREENSHOTS), "CHROMIUM": chromium}
    run = subprocess.run([node, str(CONSOLE_TESTS / "console.test.mjs")], env=env, cwd=CONSOLE_TESTS,
                         capture_output=True, text=True, timeout=240)
    if run.returncode != 0:
        pytest.fail(f"console test failed:\n{run.stdout}\n{run.stderr}\ngateway log tail:\n{gateway.tail(30)}")
    assert "console test passed" in run.stdout
    for page in ("overview", "usage", "deployments", "keys", "requests", "sign-in"):
        shot = SCREENSHOTS / f"{page}.png"
        assert shot.is_file() and shot.stat().st_size > 5_000, f"screenshot of {page}"
    # The master key never reaches a page or a log line.
    assert MASTER_KEY not in "\n".join(gateway.lines)
