"""What the metrics add to one append: the observation of its latency and the count of its
events, as the store makes them, timed over many repetitions in a process of its own, once with
the values in the process and once in multiprocess mode (files in a scratch directory).

    .venv/bin/python -m bench.bench_metrics_overhead [--repeat N]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import sys, time
from eventsourcing_app import metrics
repeat = int(sys.argv[1])
started = time.perf_counter()
for _ in range(repeat):
    metrics.APPEND_SECONDS.labels("child").observe(0.0007)
    metrics.EVENTS_APPENDED.labels("child", "ChildProfileUpdated").inc(1)
print(f"{(time.perf_counter() - started) / repeat * 1e6:.1f}")
"""


def measure(repeat: int, directory: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if directory:
        env["PROMETHEUS_MULTIPROC_DIR"] = directory
    done = subprocess.run([sys.executable, "-c", MEASURE, str(repeat)], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        print(f"metrics of one append, in the process:   {measure(args.repeat, None)} µs")
        print(f"metrics of one append, multiprocess mode: {measure(args.repeat, directory)} µs")


if __name__ == "__main__":
    main()
