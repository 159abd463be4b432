"""Shepherd's metrics with Debian's real Prometheus tools (``scripts/test`` installs them):
``promtool`` checks the alert rules (and their unit tests) and a live scrape, and a real
Prometheus server scrapes the session's gateway, loads the alert rules, and answers PromQL
queries, every query of the Grafana dashboard included.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import CLIENT_KEY, REPO_ROOT

ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO_ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "shepherd.json"
WAIT_S = 30.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found: install Debian's `prometheus` package (scripts/test does)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _traffic(gateway, requests: int = 3) -> None:
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30) as c:
        for i in range(requests):
            r = c.post("/v1/chat/completions", json={"model": "local-mock", "messages": [{"role": "user", "content": f"metrics {i}"}]})
            assert r.status_code == 200, r.text
        with c.stream("POST", "/v1/chat/completions", json={"model": "local-mock", "stream": True, "messages": [{"role": "user", "content": "a stream"}]}) as r:
            assert r.status_code == 200
            assert "[DONE]" in r.read().decode()
        assert c.post("/v1/chat/completions", json={"model": "no-such-model", "messages": []}).status_code == 404


def _scrape(gateway) -> str:
    r = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def _sample(text: str, series: str) -> float:
    """The value of one exact series line of a scrape."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series} in the scrape")


def test_alert_rules_pass_promtool_and_their_unit_tests():
    promtool = _tool("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, cwd=ALERTS_TEST.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_a_live_scrape_passes_promtool_check_metrics(gateway):
    _traffic(gateway)
    text = _scrape(gateway)
    assert "shepherd_requests_total{" in text and "shepherd_request_duration_seconds_bucket{" in text
    checked = subprocess.run([_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
        return body["data"]["result"]

    def wait_for(self, what: str, check, timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"Prometheus: {what} not seen within {timeout}s (last: {last})")


@pytest.fixture(scope="module")
def prometheus(gateway) -> Iterator[Prometheus]:
    binary = _tool("prometheus")
    work = Path(tempfile.mkdtemp(prefix="shepherd-prometheus-"))
    shutil.copy(ALERTS, work / "alerts.yml")
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        f"  - {{job_name: shepherd, static_configs: [{{targets: ['{gateway.addr}']}}]}}\n"
    )
    port = _free_port()
    log = open(work / "prometheus.log", "w")
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready:\n{(work / 'prometheus.log').read_text()}")
            time.sleep(0.1)
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def test_prometheus_scrapes_shepherd_and_answers_promql(gateway, prometheus):
    prometheus.wait_for("the shepherd target up", lambda: prometheus.query('up{job="shepherd"} == 1'))
    _traffic(gateway, requests=5)
    series = 'shepherd_requests_total{deployment="builtin/mock-1",model="local-mock",route="/v1/chat/completions",status="200"}'
    want = _sample(_scrape(gateway), series)
    assert want >= 6
    promql = 'sum(shepherd_requests_total{model="local-mock",status="200",route="/v1/chat/completions"})'
    # No traffic meanwhile: Prometheus' next scrapes must reach exactly what /metrics said.
    result = prometheus.wait_for(
        f"{promql} == {want}",
        lambda: [r for r in prometheus.query(promql) if float(r["value"][1]) == want],
    )
    assert float(result[0]["value"][1]) == want
    count = prometheus.query('sum(shepherd_request_duration_seconds_count{model="local-mock"})')
    assert float(count[0]["value"][1]) >= want
    unknown = prometheus.query('sum(shepherd_requests_total{model="other",status="404"})')
    assert float(unknown[0]["value"][1]) >= 1
    healthy = prometheus.query('shepherd_deployment_healthy{deployment="builtin/mock-1"}')
    assert [float(r["value"][1]) for r in healthy] == [1.0]


def test_every_dashboard_query_is_valid_promql_with_data(gateway, prometheus):
    _traffic(gateway)
    prometheus.wait_for("request durations", lambda: prometheus.query("shepherd_request_duration_seconds_count"))
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                queries.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard["panels"])
    assert len(queries) >= 20
    # Grafana's variables, as an "All" selection and a short range would set them.
    substitute = {"$__rate_interval": "1m", "$__range": "5m", "$model": ".*", "$key": ".*"}
    with_data = 0
    for query in queries:
        for variable, value in substitute.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"an unknown dashboard variable in {query}"
        if prometheus.query(query):
            with_data += 1
    # The request, latency and token panels have data after this traffic.
    assert with_data >= 10, f"only {with_data} of {len(queries)} dashboard queries returned data"


def test_prometheus_loads_and_evaluates_every_alert_rule(prometheus):
    def rules() -> list[dict[str, Any]]:
        body = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()
        found = [rule for group in body["data"]["groups"] for rule in group["rules"]]
        return found if found and all(rule.get("lastEvaluation", "").startswith("20") and rule["health"] == "ok" for rule in found) else []

    loaded = prometheus.wait_for("every alert rule evaluated", rules)
    names = {rule["name"] for rule in loaded}
    assert {"ShepherdHighErrorRate", "ShepherdSlowRequests", "ShepherdDeploymentUnhealthy", "ShepherdCircuitOpen",
            "ShepherdBudgetNearlySpent", "ShepherdRateLimitingSurge", "ShepherdConfigReloadFailed"} <= names
    # The session's gateway is healthy: nothing fires.
    firing = [rule["name"] for rule in loaded if rule["state"] == "firing"]
    assert firing == [], firing
