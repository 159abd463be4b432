#!/usr/bin/env python3
"""One bench scenario, Shepherd and nginx alternating on one running pair.

A quicker and steadier A/B than a whole `bench/run.sh` run when one change to the hot path is
being judged: the servers start once (static upstream by default), then each round loads
Shepherd, then nginx, with the scenario of `bench/bench.py` named by `--scenario` (c64 by
default; c1, stream64, stream_start...) and prints the proxy's CPU time (utime + stime of its
process tree) per answered request or stream, the latency (or time to first chunk) p50 and p99,
and how much of Shepherd's CPU went to its ledger writer thread.
Build first (`bench/run.sh` does, or `cargo build --release -p shepherd -p shepherd-loadgen`).

    python3 bench/ab.py --rounds 5
    python3 bench/ab.py --scenario stream64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def thread_cpu_seconds(pid: int, name: str) -> float:
    """Run time of the process's thread called `name` (schedstat, nanoseconds)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == name:
            return int((task / "schedstat").read_text().split()[0]) / 1e9
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--upstream", choices=("mock", "static"), default="static")
    parser.add_argument("--scenario", default="c64")
    parser.add_argument("--c1-requests", type=int, default=3000)
    args = parser.parse_args()
    run = bench.scenarios(args)[args.scenario]
    bench.UPSTREAM = args.upstream
    servers = bench.Servers(Path(tempfile.mkdtemp(prefix="shepherd-ab-")))
    try:
        servers.start_all()
        time.sleep(0.5)
        bench.http("shepherd", "--concurrency", "64", "--seconds", "2")  # warm-up
        for round_no in range(1, args.rounds + 1):
            for target in ("shepherd", "nginx"):
                pid = servers.pid(target)
                cpu_before = bench.cpu_seconds(pid)
                ledger_before = thread_cpu_seconds(pid, "usage-writer") if target == "shepherd" else 0.0
                result = run(target)
                cpu = bench.cpu_seconds(pid) - cpu_before
                count = max(result.get("requests") or result.get("streams") or 0, 1)
                line = {"round": round_no, "target": target, "count": count,
                        "cpu_us_per_request": round(cpu * 1e6 / count, 1)}
                for key in ("p50_us", "p99_us"):
                    if key in result:
                        line[key] = round(result[key])
                for key in ("p50", "p99"):
                    if key in result.get("ttfb_us", {}):
                        line[f"ttfb_{key}_us"] = round(result["ttfb_us"][key])
                if target == "shepherd":
                    ledger = thread_cpu_seconds(pid, "usage-writer") - ledger_before
                    line["ledger_thread_us_per_request"] = round(ledger * 1e6 / count, 1)
                print(json.dumps(line), flush=True)
    finally:
        servers.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
