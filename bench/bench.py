#!/usr/bin/env python3
"""Shepherd's benchmark: the same load three ways (direct to the upstream, through nginx
proxy_pass, through Shepherd), on this machine, in the same run, interleaved.

Two upstreams (`--upstream`): mock-upstream (`mock`, the default: bodies built per request,
streams paced), or a static nginx (`static`, as the independent harness of issue 17 ran it: one
realistic 828-byte completion with usage, or a 22-event ~6.8 KB stream ending in a usage chunk,
sent at once). `--ledger-rows N` starts Shepherd on a SQLite ledger already holding N rows.

The proxy under test is pinned to core 0; mock-upstream and the load generators to core 1.
Besides wall-clock figures it records the proxy's own CPU time per request (from
/proc/PID/stat, process tree), the hypervisor steal of each run (/proc/stat), and whether the
load side's core saturated. Run through bench/run.sh, which builds and installs what it needs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RELEASE = ROOT / "target" / "release"
HZ = os.sysconf("SC_CLK_TCK")
CORE_PROXY, CORE_LOAD = "0", "1"
PORT_MOCK, PORT_NGINX, PORT_SHEPHERD = 19100, 19101, 19102
# --limits: Shepherd with every key limit on, in memory and in Redis (a redis-server pinned to
# the load core, so its CPU is not the proxy's).
PORT_LIMITS_MEMORY, PORT_LIMITS_REDIS, PORT_REDIS = 19103, 19104, 19105
LIMIT_TARGETS = ("limits_memory", "limits_redis")
KEY = "sk-bench-client"
CHAT_BODY = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "Say hello to the benchmark"}]})
STEAL_LIMIT_PCT = 10.0
LOAD_SATURATED_PCT = 90.0
TARGETS = ("direct", "nginx", "shepherd")
# Set from the command line (see the module doc).
UPSTREAM = "mock"
LEDGER_ROWS = 0


# ---------------------------------------------------------------- /proc readings

def proc_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU time of a process tree, in seconds: the nanosecond run time of every thread
    (/proc/PID/task/TID/schedstat) where the kernel has it, else utime + stime from
    /proc/PID/stat (clock ticks, 10 ms)."""
    total = 0.0
    for member in proc_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{member}/task")
            total += sum(int(Path(f"/proc/{member}/task/{tid}/schedstat").read_text().split()[0]) for tid in tasks) / 1e9
        except (OSError, ValueError, IndexError):
            try:
                fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / HZ
            except OSError:
                continue
    return total


def rss_mb(pid: int) -> float:
    total_kb = 0
    for member in proc_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def cpu_counters() -> dict[str, list[int]]:
    """Per-cpu jiffies from /proc/stat: cpu, cpu0, cpu1, ..."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu"):
            name, *values = line.split()
            out[name] = [int(v) for v in values]
    return out


def usage_between(before: dict, after: dict) -> dict:
    """Steal % of the whole machine and busy % of the load-side core."""
    def delta(name):
        return [a - b for a, b in zip(after[name], before[name])]
    total = delta("cpu")
    steal_pct = 100.0 * total[7] / max(sum(total), 1)
    load = delta(f"cpu{CORE_LOAD}")
    idle = load[3] + load[4]
    load_busy_pct = 100.0 * (sum(load[:8]) - idle) / max(sum(load[:8]), 1)
    return {"steal_pct": round(steal_pct, 1), "load_core_busy_pct": round(load_busy_pct, 1)}


# ---------------------------------------------------------------- processes

def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_http(port: int, path: str = "/", timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Servers:
    """mock-upstream, nginx and Shepherd, started pinned, stopped at the end."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start_all(self) -> None:
        for port in (PORT_MOCK, PORT_NGINX, PORT_SHEPHERD):
            if not port_free(port):
                raise RuntimeError(f"port {port} is taken; stop what uses it")
        if UPSTREAM == "static":
            self.procs["mock"] = subprocess.Popen(self.static_upstream_command(),
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            self.procs["mock"] = subprocess.Popen(
                ["taskset", "-c", CORE_LOAD, str(RELEASE / "mock-upstream"), "--listen", f"127.0.0.1:{PORT_MOCK}", "--no-record"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(PORT_MOCK)
        if LEDGER_ROWS:
            self.fill_ledger()
        self.start_nginx()
        self.start_shepherd()

    def static_upstream_command(self) -> list[str]:
        prefix = self.workdir / "static"
        prefix.mkdir(exist_ok=True)
        whole, stream = static_bodies()
        # nginx's workers run as an unprivileged user: they must be able to read the bodies.
        self.workdir.chmod(0o755)
        bodies = prefix / "bodies"
        for path, body in (("whole", whole), ("stream", stream)):
            (bodies / path / "v1" / "chat").mkdir(parents=True, exist_ok=True)
            (bodies / path / "v1" / "chat" / "completions").write_text(body)
        for directory in [prefix, *bodies.rglob("*"), bodies]:
            directory.chmod(0o755 if directory.is_dir() else 0o644)
        conf = (BENCH / "static-upstream.conf.template").read_text().format(prefix=prefix, port=PORT_MOCK)
        (prefix / "nginx.conf").write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return ["taskset", "-c", CORE_LOAD, nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]

    def ledger_path(self) -> Path:
        return self.workdir / "ledger" / "shepherd.db"

    def fill_ledger(self) -> None:
        """A ledger of LEDGER_ROWS rows for Shepherd to start on (the insert bench's records)."""
        started = time.time()
        subprocess.run([str(RELEASE / "examples" / "ledger_insert"), "--rows", str(LEDGER_ROWS),
                        "--keep", str(self.ledger_path())], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        size = self.ledger_path().stat().st_size / 1e6
        print(f"ledger: {LEDGER_ROWS:,} rows, {size:,.0f} MB in {time.time() - started:.0f} s", file=sys.stderr, flush=True)

    def nginx_command(self) -> list[str]:
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = (BENCH / "nginx.conf.template").read_text().format(
            prefix=prefix, port=PORT_NGINX, upstream_port=PORT_MOCK)
        (prefix / "nginx.conf").write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return ["taskset", "-c", CORE_PROXY, nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]

    def start_nginx(self) -> None:
        self.procs["nginx"] = subprocess.Popen(self.nginx_command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(PORT_NGINX)

    def shepherd_command(self) -> list[str]:
        template = "shepherd.static.yaml.template" if UPSTREAM == "static" else "shepherd.bench.yaml.template"
        state = f"state: {{database: 'sqlite://{self.ledger_path()}'}}" if LEDGER_ROWS else ""
        config = (BENCH / template).read_text().format(port=PORT_SHEPHERD, upstream_port=PORT_MOCK, state=state)
        path = self.workdir / "shepherd.yaml"
        path.write_text(config)
        return ["taskset", "-c", CORE_PROXY, str(RELEASE / "shepherd"), "serve", "--config", str(path)]

    def start_shepherd(self) -> None:
        self.access_log = open(self.workdir / "shepherd-access.log", "wb")
        self.procs["shepherd"] = subprocess.Popen(self.shepherd_command(), stdout=self.access_log, stderr=subprocess.DEVNULL)
        wait_http(PORT_SHEPHERD)

    def start_limits(self) -> None:
        """Redis, and Shepherd with limits in memory and in Redis."""
        for port in (PORT_LIMITS_MEMORY, PORT_LIMITS_REDIS, PORT_REDIS):
            if not port_free(port):
                raise RuntimeError(f"port {port} is taken; stop what uses it")
        redis = shutil.which("redis-server")
        if not redis:
            raise RuntimeError("--limits needs redis-server (apt-get install redis-server)")
        self.procs["redis"] = subprocess.Popen(
            ["taskset", "-c", CORE_LOAD, redis, "--port", str(PORT_REDIS), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while port_free(PORT_REDIS) and time.time() < deadline:
            time.sleep(0.05)
        template = (BENCH / "shepherd.limits.yaml.template").read_text()
        for target, port, state in (
            ("limits_memory", PORT_LIMITS_MEMORY, ""),
            ("limits_redis", PORT_LIMITS_REDIS, f"state: {{redis: 'redis://127.0.0.1:{PORT_REDIS}'}}"),
        ):
            workdir = self.workdir / target
            workdir.mkdir(exist_ok=True)
            path = workdir / "shepherd.yaml"
            path.write_text(template.format(port=port, upstream_port=PORT_MOCK, state=state))
            log = open(workdir / "access.log", "wb")
            self.procs[target] = subprocess.Popen(
                ["taskset", "-c", CORE_PROXY, str(RELEASE / "shepherd"), "serve", "--config", str(path)],
                stdout=log, stderr=subprocess.DEVNULL)
            wait_http(port)

    def pid(self, target: str) -> int | None:
        proc = self.procs.get(target)
        return proc.pid if proc else None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def url(target: str, path: str = "/v1/chat/completions", stream: bool = False) -> str:
    port = {"direct": PORT_MOCK, "nginx": PORT_NGINX, "shepherd": PORT_SHEPHERD,
            "limits_memory": PORT_LIMITS_MEMORY, "limits_redis": PORT_LIMITS_REDIS}[target]
    if UPSTREAM == "static" and path == "/v1/chat/completions" and target in ("direct", "nginx"):
        # The static upstream serves each body at its own path; Shepherd picks it by model.
        path = "/stream/v1/chat/completions" if stream else "/whole/v1/chat/completions"
    return f"http://127.0.0.1:{port}{path}"


# ---------------------------------------------------------------- the static upstream's bodies

STATIC_MODEL = "gpt-4.1-2025-04-14"
STATIC_HEAD = {"id": "chatcmpl-BenchStatic0123456789abcdefXYZ", "created": 1764979200, "model": STATIC_MODEL}
WORDS = ("The gateway forwards each request to the upstream and counts the tokens it reports, "
         "so that budgets, rate limits and the usage ledger stay exact under load. ").split()


def static_bodies() -> tuple[str, str]:
    """An 828-byte chat completion carrying usage, and a 22-event stream (~6.8 KB): a role
    chunk, 18 content chunks, the finish chunk, a usage chunk, then [DONE]."""
    usage = {"prompt_tokens": 19, "completion_tokens": 96, "total_tokens": 115,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    def whole_with(text: str) -> str:
        return json.dumps({**STATIC_HEAD, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
             "logprobs": None, "finish_reason": "stop"}],
            "usage": usage, "service_tier": "default", "system_fingerprint": "fp_bench0001"},
            separators=(",", ":"))
    text = ""
    n = 0
    while len(whole_with(text + WORDS[n % len(WORDS)] + " ")) <= 828:
        text += WORDS[n % len(WORDS)] + " "
        n += 1
    whole = whole_with(text.ljust(len(text) + 828 - len(whole_with(text))))

    def chunk(delta: dict, finish=None, chunk_usage=None, choices=True) -> str:
        body = {**STATIC_HEAD, "object": "chat.completion.chunk", "service_tier": "default",
                "system_fingerprint": "fp_bench0001",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
                "usage": chunk_usage}
        return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"
    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    for i in range(18):
        piece = " ".join(WORDS[(i * 4 + j) % len(WORDS)] for j in range(4)) + " "
        events.append(chunk({"content": piece}))
    events.append(chunk({}, finish="stop"))
    events.append(chunk({}, chunk_usage=usage, choices=False))
    events.append("data: [DONE]\n\n")
    return whole, "".join(events)


# ---------------------------------------------------------------- load generators

def http(target: str, *args: str) -> dict:
    """Plain chat completions through `loadgen http` (closed loop, or open loop with --rate)."""
    return loadgen("http", "--url", url(target), "--key", KEY, "--body", CHAT_BODY, *args)


def loadgen(*args: str) -> dict:
    command = ["taskset", "-c", CORE_LOAD, str(RELEASE / "loadgen"), *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- scenarios

def measured(servers: Servers, target: str, run) -> dict:
    """Runs `run()`, adding the proxy's CPU per request, steal, and the load core's usage.
    A run with high steal is repeated once; the calmer of the two is kept."""
    best = None
    for attempt in range(2):
        pid = servers.pid(target)
        cpu0 = cpu_seconds(pid) if pid else 0.0
        counters0 = cpu_counters()
        result = run()
        counters1 = cpu_counters()
        cpu1 = cpu_seconds(pid) if pid else 0.0
        result.update(usage_between(counters0, counters1))
        count = result.get("requests") or result.get("streams") or 0
        if pid and count:
            result["proxy_cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / count
        result["high_steal"] = result["steal_pct"] > STEAL_LIMIT_PCT
        result["load_bound"] = result["load_core_busy_pct"] > LOAD_SATURATED_PCT
        if best is None or result["steal_pct"] < best["steal_pct"]:
            best = result
        if not result["high_steal"]:
            break
    return best


def stream_load(target: str, *args: str) -> dict:
    """Streams through `loadgen stream`: paced by mock-upstream, or the static upstream's fixed
    22-event stream sent at once."""
    if UPSTREAM == "static":
        args = tuple(a for a in _without_pacing(args)) + ("--chunks", "22", "--delay-ms", "0", "--model", "gpt-stream")
    return loadgen("stream", "--url", url(target, stream=True), "--key", KEY, *args)


def _without_pacing(args: tuple) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--chunks", "--delay-ms"):
            skip = True
            continue
        out.append(arg)
    return out


def scenarios(args) -> dict:
    seconds = str(args.seconds)
    return {
        "c1": lambda t: http(t, "--concurrency", "1", "--requests", str(args.c1_requests)),
        "c64": lambda t: http(t, "--concurrency", "64", "--seconds", seconds),
        "open500": lambda t: http(t, "--rate", "500", "--concurrency", "64", "--seconds", seconds),
        "open2000": lambda t: http(t, "--rate", "2000", "--concurrency", "256", "--seconds", seconds),
        "open5000": lambda t: http(t, "--rate", "5000", "--concurrency", "512", "--seconds", seconds),
        # 8 paced streams at a time for twice the usual duration: ~240 streams per run, enough
        # for a time-to-first-chunk p99 that is not just the slowest stream.
        "stream": lambda t: stream_load(t, "--concurrency", "8",
                                        "--seconds", str(2 * args.seconds), "--chunks", "64", "--delay-ms", "5"),
        # Stream start alone: one short stream at a time, thousands of samples, so the p99 of
        # the added time to first chunk is not at the mercy of a handful of slow streams.
        "stream_start": lambda t: stream_load(t, "--concurrency", "1",
                                              "--seconds", str(args.seconds), "--chunks", "1", "--delay-ms", "0"),
        "streams1000": lambda t: stream_load(t, "--concurrency", "1000", "--streams-per-worker", "1",
                                             "--seconds", "30", "--chunks", "64", "--delay-ms", "5"),
        # Many streams at once, back to back, as the independent harness ran them (64 workers).
        "stream64": lambda t: stream_load(t, "--concurrency", "64", "--seconds", seconds,
                                          "--chunks", "64", "--delay-ms", "0"),
    }


def held_connections_rss(servers: Servers, target: str) -> dict:
    """RSS of the proxy while 1,024 idle keep-alive connections are open to it."""
    pid = servers.pid(target)
    hold = subprocess.Popen(["taskset", "-c", CORE_LOAD, str(RELEASE / "loadgen"), "hold", "--url", url(target, "/healthz"),
                             "--connections", "1024", "--seconds", "2"], stdout=subprocess.PIPE, text=True)
    ready = hold.stdout.readline()
    time.sleep(0.5)
    held = rss_mb(pid)
    hold.communicate(timeout=60)
    return {"rss_1024_conns_mb": held, "hold_ready": json.loads(ready).get("ready") if ready else 0}


def cold_start(servers: Servers, target: str, tries: int) -> dict:
    """Stops the running server, then measures process start to first 200, `tries` times."""
    servers.procs[target].terminate()
    servers.procs[target].wait(timeout=10)
    command = servers.shepherd_command() if target == "shepherd" else servers.nginx_command()
    health = url(target, "/healthz") if target == "shepherd" else url("nginx", "/v1/models")
    times = []
    for _ in range(tries):
        result = loadgen("coldstart", "--url", health, "--", *command)
        if result.get("first_200_ms") is not None:
            times.append(result["first_200_ms"])
        time.sleep(0.2)
    if target == "shepherd":
        servers.start_shepherd()
    else:
        servers.start_nginx()
    return {"first_200_ms_median": statistics.median(times) if times else None, "tries": len(times)}


def soak(servers: Servers, minutes: float) -> dict:
    """Open-loop load on Shepherd for `minutes`, sampling its RSS every 10 s."""
    pid = servers.pid("shepherd")
    load = subprocess.Popen(["taskset", "-c", CORE_LOAD, str(RELEASE / "loadgen"), "http", "--url", url("shepherd"),
                             "--key", KEY, "--body", CHAT_BODY, "--rate", "1000", "--concurrency", "256",
                             "--seconds", str(minutes * 60)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    started = time.time()
    while load.poll() is None:
        samples.append({"t_s": round(time.time() - started), "rss_mb": round(rss_mb(pid), 2)})
        time.sleep(10)
    return {"minutes": minutes, "samples": samples}


# ---------------------------------------------------------------- report

def median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(summary: dict) -> str:
    rows = []
    def row(label, key, scenario, digits=0, added=False):
        values = {t: summary[scenario][t].get(key) for t in TARGETS}
        if added and values["direct"] is not None:
            values = {t: (None if t == "direct" or values[t] is None else values[t] - values["direct"]) for t in TARGETS}
        ratio = "-"
        if values.get("nginx") and values.get("shepherd") is not None and values["nginx"] > 0:
            ratio = f"{values['shepherd'] / values['nginx']:.2f}x"
        rows.append(f"| {label} | {fmt(values['direct'], digits)} | {fmt(values['nginx'], digits)} | {fmt(values['shepherd'], digits)} | {ratio} |")
    row("c=1 added latency p50 (µs)", "p50_us", "c1", added=True)
    row("c=1 added latency p99 (µs)", "p99_us", "c1", added=True)
    row("c=1 proxy CPU per request (µs)", "proxy_cpu_us_per_req", "c1")
    row("c=64 requests/s", "rps", "c64")
    row("c=64 p99 (µs)", "p99_us", "c64")
    row("c=64 proxy CPU per request (µs)", "proxy_cpu_us_per_req", "c64")
    row("c=64 load core busy (%)", "load_core_busy_pct", "c64")
    for rate in ("500", "2000", "5000"):
        s = f"open{rate}"
        row(f"open {rate}/s achieved rate", "rps", s)
        row(f"open {rate}/s p50 (µs)", "p50_us", s)
        row(f"open {rate}/s p99 (µs)", "p99_us", s)
        row(f"open {rate}/s max (µs)", "max_us", s)
        row(f"open {rate}/s errors", "errors", s)
        row(f"open {rate}/s proxy CPU per request (µs)", "proxy_cpu_us_per_req", s)
    row("stream added time to first chunk p50 (µs)", "ttfb_p50_us", "stream", added=True)
    row("stream added time to first chunk p99 (µs)", "ttfb_p99_us", "stream", added=True)
    row("stream chunk delay beyond pacing p99 (µs)", "excess_p99_us", "stream")
    row("stream proxy CPU per stream (µs)", "proxy_cpu_us_per_req", "stream")
    row("64 streams at once: streams/s", "streams_per_s", "stream64")
    row("64 streams at once: added time to first chunk p99 (µs)", "ttfb_p99_us", "stream64", added=True)
    row("64 streams at once: proxy CPU per stream (µs)", "proxy_cpu_us_per_req", "stream64")
    row("64 streams at once: errors + incomplete", "failed", "stream64")
    row("stream start (1 at a time) added time to first chunk p50 (µs)", "ttfb_p50_us", "stream_start", added=True)
    row("stream start (1 at a time) added time to first chunk p99 (µs)", "ttfb_p99_us", "stream_start", added=True)
    row("1,000 streams: completed", "streams", "streams1000")
    row("1,000 streams: errors + incomplete", "failed", "streams1000")
    row("1,000 streams: chunks late > 10 ms", "chunks_late_over_10ms", "streams1000")
    row("1,000 streams: chunk delay p99 (µs)", "excess_p99_us", "streams1000")
    row("1,000 streams: proxy CPU per stream (µs)", "proxy_cpu_us_per_req", "streams1000")
    row("RSS idle (MB)", "rss_idle_mb", "memory", 1)
    row("RSS with 1,024 connections (MB)", "rss_1024_conns_mb", "memory", 1)
    row("RSS after load (MB)", "rss_after_mb", "memory", 1)
    row("cold start to first 200 (ms)", "first_200_ms_median", "coldstart", 1)
    head = "| scenario | direct | nginx | shepherd | shepherd/nginx |\n|---|---:|---:|---:|---:|"
    text = head + "\n" + "\n".join(rows)
    if all(t in summary.get("c1", {}) for t in LIMIT_TARGETS):
        text += "\n\n" + limits_table(summary)
    return text


def limits_table(summary: dict) -> str:
    """Key limits in memory vs in Redis, beside nginx, same run."""
    rows = ["| limits on (rpm, tpm, concurrency, budget) | nginx | memory | redis | redis - memory |",
            "|---|---:|---:|---:|---:|"]
    for scenario, label in (("c1", "c=1"), ("c64", "c=64")):
        if scenario not in summary:
            continue
        by = summary[scenario]
        for key, what, added in (("proxy_cpu_us_per_req", "proxy CPU per request (µs)", False),
                                 ("p50_us", "added latency p50 (µs)" if scenario == "c1" else "p50 (µs)", scenario == "c1"),
                                 ("p99_us", "added latency p99 (µs)" if scenario == "c1" else "p99 (µs)", scenario == "c1")):
            values = {t: by.get(t, {}).get(key) for t in ("direct", "nginx", *LIMIT_TARGETS)}
            if added and values["direct"] is not None:
                values = {t: (None if v is None else v - values["direct"]) for t, v in values.items()}
            memory, redis = values["limits_memory"], values["limits_redis"]
            delta = fmt(redis - memory) if memory is not None and redis is not None else "-"
            rows.append(f"| {label} {what} | {fmt(values['nginx'])} | {fmt(memory)} | {fmt(redis)} | {delta} |")
    return "\n".join(rows)


def flatten_stream(result: dict) -> dict:
    result["streams_per_s"] = result["streams"] / max(result.get("seconds") or 0, 1e-9)
    result["ttfb_p50_us"] = result["ttfb_us"]["p50"]
    result["ttfb_p99_us"] = result["ttfb_us"]["p99"]
    result["excess_p99_us"] = result["chunk_excess_us"]["p99"]
    result["failed"] = result["errors"] + result["incomplete"]
    return result


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="repeat every scenario this many times (median kept)")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each timed run")
    parser.add_argument("--c1-requests", type=int, default=3000)
    parser.add_argument("--only", default="", help="comma-separated scenarios (c1,c64,open500,open2000,open5000,stream,stream_start,streams1000,stream64)")
    parser.add_argument("--soak", type=float, default=0.0, metavar="MINUTES", help="also soak Shepherd for MINUTES, sampling RSS")
    parser.add_argument("--limits", action="store_true", help="also run Shepherd with key limits in memory and in Redis (c1 and c64)")
    parser.add_argument("--upstream", choices=("mock", "static"), default="mock",
                        help="mock-upstream (paced, built per request) or a static nginx with fixed realistic bodies")
    parser.add_argument("--ledger-rows", type=int, default=0, metavar="N",
                        help="start Shepherd on a SQLite ledger already holding N rows")
    args = parser.parse_args()
    global UPSTREAM, LEDGER_ROWS
    UPSTREAM, LEDGER_ROWS = args.upstream, args.ledger_rows

    workdir = Path(tempfile.mkdtemp(prefix="shepherd-bench-"))
    servers = Servers(workdir)
    started = time.time()
    raw: dict = {"runs": {}}
    try:
        servers.start_all()
        if args.limits:
            servers.start_limits()
        time.sleep(0.5)
        memory_runs = {t: {} for t in TARGETS}
        for t in ("nginx", "shepherd"):
            memory_runs[t]["rss_idle_mb"] = rss_mb(servers.pid(t))
            memory_runs[t].update(held_connections_rss(servers, t))
        plan = scenarios(args)
        chosen = [s for s in plan if not args.only or s in args.only.split(",")]
        for round_no in range(args.rounds):
            for scenario in chosen:
                # Interleave and rotate the order so no target always runs first.
                order = TARGETS[round_no % 3:] + TARGETS[:round_no % 3]
                if args.limits and scenario in ("c1", "c64"):
                    order = order + (LIMIT_TARGETS if round_no % 2 == 0 else LIMIT_TARGETS[::-1])
                for target in order:
                    result = measured(servers, target, lambda: plan[scenario](target))
                    if scenario.startswith("stream"):
                        result = flatten_stream(result)
                    raw["runs"].setdefault(scenario, {}).setdefault(target, []).append(result)
                    flag = " HIGH STEAL" if result["high_steal"] else ""
                    flag += " LOAD-BOUND" if result["load_bound"] else ""
                    print(f"round {round_no + 1} {scenario:12} {target:9} steal {result['steal_pct']:4.1f}%{flag}", file=sys.stderr, flush=True)
        # "After load" = a few seconds after the last scenario: Shepherd gives free memory back
        # on its first quiet tick (every 2 s), nginx keeps what it has either way.
        time.sleep(3)
        for t in ("nginx", "shepherd"):
            memory_runs[t]["rss_after_mb"] = rss_mb(servers.pid(t))
        coldstart = {"direct": {}}
        for t in ("nginx", "shepherd"):
            coldstart[t] = cold_start(servers, t, tries=5)
        if args.soak:
            raw["soak"] = soak(servers, args.soak)
    finally:
        servers.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {s: {t: {k: median_of(runs, k) for k in runs[0] if isinstance(runs[0][k], (int, float)) and not isinstance(runs[0][k], bool)}
                   for t, runs in by_target.items()} for s, by_target in raw["runs"].items()}
    for s in scenarios(args):
        summary.setdefault(s, {t: {} for t in TARGETS})
    summary["memory"] = memory_runs
    summary["coldstart"] = coldstart
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB",
        "kernel": platform.release(),
        "rounds": args.rounds, "seconds": args.seconds,
        "upstream": UPSTREAM, "ledger_rows": LEDGER_ROWS,
        "wall_s": round(time.time() - started),
    }
    report = {"meta": meta, "summary": summary, **raw}
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (results / f"{stamp}.json").write_text(json.dumps(report, indent=1))
    text = table(summary)
    setup = f"upstream {UPSTREAM}, ledger {LEDGER_ROWS:,} rows"
    (results / "latest.md").write_text(f"Commit {meta['commit']}, {meta['date']}, {meta['machine']}, {setup}\n\n{text}\n")
    print(f"\nShepherd benchmark — commit {meta['commit']}, {meta['date']}, {setup}, {meta['rounds']} rounds (medians), {meta['wall_s']} s")
    print(text)
    if "soak" in raw:
        rss = [s["rss_mb"] for s in raw["soak"]["samples"]]
        print(f"\nsoak {args.soak} min: RSS first {rss[0]:.1f} MB, last {rss[-1]:.1f} MB, max {max(rss):.1f} MB")
    print(f"\nraw results: bench/results/{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
