#!/usr/bin/env python3
"""CPU per request at 64 connections, Shepherd and nginx alternating on one running pair.

A quicker and steadier A/B than a whole `bench/run.sh` run when one change to the hot path is
being judged: the servers start once (static upstream by default), then each round loads
Shepherd, then nginx, for `--seconds` and prints the proxy's CPU time (utime + stime of its
process tree) per answered request, and how much of Shepherd's went to its ledger writer thread.
Build first (`bench/run.sh` does, or `cargo build --release -p shepherd -p shepherd-loadgen`).

    python3 bench/ab.py --rounds 5
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
    args = parser.parse_args()
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
                result = bench.http(target, "--concurrency", "64", "--seconds", str(args.seconds))
                cpu = bench.cpu_seconds(pid) - cpu_before
                line = {"round": round_no, "target": target, "requests": result["ok"],
                        "cpu_us_per_request": round(cpu * 1e6 / max(result["ok"], 1), 1)}
                if target == "shepherd":
                    ledger = thread_cpu_seconds(pid, "usage-writer") - ledger_before
                    line["ledger_thread_us_per_request"] = round(ledger * 1e6 / max(result["ok"], 1), 1)
                print(json.dumps(line), flush=True)
    finally:
        servers.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
