"""A DynamoDB endpoint of a benchmark's own (dynoxide, the local stack's, on its own port and
state), so that a benchmark neither loads nor reads the shared stack's endpoint."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from replicator.config import load_settings
from replicator.stack import LocalStack


def dynoxide_command(port: int, state: Path) -> list[str]:
    binary = LocalStack(load_settings(None)).dynoxide
    if not binary.exists():
        raise SystemExit("dynoxide is not built: run `.venv/bin/replicator stack install`")
    return [str(binary), "serve", "--port", str(port), "--db-path", str(state), "--log", "quiet"]


@contextmanager
def serve(command: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run an endpoint's server until the block ends; waits until it answers HTTP."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{command[0]} exited at start: is port {port} taken?")
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{command[0]} did not start on port {port}") from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@contextmanager
def own_endpoint(port: int) -> Iterator[str]:
    """A dynoxide of our own on 127.0.0.1:port with a throwaway state; yields its URL."""
    folder = Path(tempfile.mkdtemp(prefix="bench-endpoint-"))
    try:
        with serve(dynoxide_command(port, folder / "state.db"), port):
            yield f"http://127.0.0.1:{port}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
