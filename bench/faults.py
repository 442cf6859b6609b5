"""The fault suite (tests/faults/) longer and bigger, outside CI.

The scenarios break the stack's parts (the consumer, the DynamoDB endpoint behind a fault
proxy, Kafka, PostgreSQL, Connect), so run this against a stack nobody else uses: point the
settings at another home and other ports through the environment, for example

    export REPLICATOR_STACK__HOME=$PWD/.stack-faults REPLICATOR_POSTGRES__PORT=25432 \\
      REPLICATOR_STACK__KAFKA_PORT=29092 REPLICATOR_STACK__CONTROLLER_PORT=29093 \\
      REPLICATOR_STACK__CONNECT_PORT=28083 REPLICATOR_STACK__DYNAMODB_PORT=28000 \\
      REPLICATOR_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:29092 \\
      REPLICATOR_CONNECTOR__URL=http://127.0.0.1:28083 \\
      REPLICATOR_DYNAMODB__ENDPOINT_URL=http://127.0.0.1:28000
    .venv/bin/python bench/faults.py --scale 4 [-k broker]

``--scale`` multiplies each scenario's fault window (kills, seconds of faults, pause length);
at scale > 1 scenario 6 also runs with the boto3 client; the sizes of 3b and 10 grow with it
(50k and 100k rows at 1). ``--idle-minutes`` is scenario 11's idle window (30; 2 in CI).
Each scenario prints one line; the lines are collected and printed as a table at the end (the
figures of record are in bench/RESULTS.md). Exit status is pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=4.0, help="fault windows x this (CI: 1)")
    parser.add_argument("-k", default="", help="pytest -k expression: a subset of scenarios")
    parser.add_argument(
        "--idle-minutes", type=float, default=30.0, help="scenario 11's idle window (CI: 2)"
    )
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as results:
        env = {
            **os.environ,
            "FAULTS_SCALE": str(args.scale),
            "FAULTS_RESULTS": results.name,
            "FAULTS_IDLE_S": str(args.idle_minutes * 60),
        }
        # pytest-timeout's 600 s per test (pyproject) is CI's; here the windows are longer.
        timeout_s = int(600 * max(1.0, args.scale) + args.idle_minutes * 60)
        command = [sys.executable, "-m", "pytest", "tests/faults", "-m", "faults", "-q", "-s"]
        command += ["--timeout", str(timeout_s)]
        if args.k:
            command += ["-k", args.k]
        started = time.monotonic()
        code = subprocess.call(command, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)})
        took = time.monotonic() - started
        lines = [line.strip() for line in results if line.strip()]
    print(f"\nfault scenarios at scale {args.scale:g}, {took / 60:.1f} min:")
    for line in lines:
        print(" ", line.removeprefix("FAULTS "))
    return code


if __name__ == "__main__":
    sys.exit(main())
