"""A moto server of a benchmark's own, so a benchmark neither loads nor reads the shared
endpoint (moto keeps every item in memory and slows down as its tables grow)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def own_moto(port: int) -> Iterator[str]:
    """Start moto's server on 127.0.0.1:port, yield its endpoint URL, stop it afterwards."""
    moto = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_up(moto, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        moto.terminate()
        try:
            moto.wait(30)
        except subprocess.TimeoutExpired:
            moto.kill()
            moto.wait(30)


def _wait_until_up(moto: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if moto.poll() is not None:
            raise SystemExit(f"moto exited at start: is port {port} taken? (--moto-port)")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"moto did not start on port {port}")
