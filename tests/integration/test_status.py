"""A running consumer's status page in headless Chromium (a screenshot whose pixels show the
lag and throughput series, the DOM its title, tables and readiness), and the CLI screens that
read the same consumer: `lag --json`, `status --json`, `lag --watch`, `cost`, and `lag` when no
consumer answers. The consumer's metrics also carry the slot, the connector and the DynamoDB
capacity it read itself."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image

from replicator.config import Settings
from replicator.observe.status import LAG_COLOUR, SPEED_COLOUR
from replicator.ops.workload import Workload
from tests.integration import helpers
from tests.integration.helpers import wait_for
from tests.integration.test_metrics_health import free_port, get, samples, start_at_the_end

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
WAVES = 4
BACKLOG = 60  # rows per table written before the consumer starts


def cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return helpers.cli(config, *args, timeout=timeout, columns=100)  # screens drawn 100 wide


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: ./dev test installs Debian's chromium package"
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


def rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def pixels_near(image: Image.Image, colour: str, tolerance: int = 40) -> list[tuple[int, int]]:
    r, g, b = rgb(colour)
    data = image.convert("RGB").tobytes()
    width = image.width
    return [
        ((i // 3) % width, (i // 3) // width)
        for i in range(0, len(data), 3)
        if abs(data[i] - r) <= tolerance
        and abs(data[i + 1] - g) <= tolerance
        and abs(data[i + 2] - b) <= tolerance
    ]


@pytest.fixture(scope="module")
def running(consumer_factory: Any, settings: Settings) -> Any:
    """One consumer for the module. Its group starts at the topics' end; rows written before it
    starts form a backlog it drains in small batches (the lag chart falls), then rows written
    in waves come and go (the throughput chart rises and falls)."""
    port = free_port()

    def change(data: dict[str, Any]) -> None:
        data["metrics"]["port"] = port
        data["metrics"]["lag_interval_s"] = 0.5
        data["metrics"]["history_interval_s"] = 0.5
        data["metrics"]["source_interval_s"] = 1.0
        data["kafka"]["batch_size"] = 20

    consumer, own = consumer_factory("_status", change)
    start_at_the_end(own)
    with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
        workload = Workload(conn, seed=31)
        workload.ensure_loans(3)
        for _ in range(BACKLOG):
            workload.insert_log()
            workload.insert_payment()
        consumer.start()
        wait_for(lambda: get(port, "/readyz")[0] == 200, 90, 0.2, "/readyz 200")
        for wave in range(WAVES):
            for _ in range(8 * (wave % 2 + 1)):
                workload.insert_log()
                workload.insert_payment()
            time.sleep(1.5)
    ours = BACKLOG + sum(8 * (wave % 2 + 1) for wave in range(WAVES))

    def applied() -> dict[str, float]:
        return {
            dict(k)["table"]: v for k, v in samples(port, "replicator_events_applied_total").items()
        }

    # Others write to the same tables meanwhile: at least our rows.
    wait_for(
        lambda: all(applied().get(m.name, 0) >= ours for m in own.tables),
        120,
        0.5,
        "our rows applied",
    )
    time.sleep(1.5)  # a tail on the charts
    yield consumer, own, port
    consumer.stop()


def test_metrics_carry_slot_connector_and_consumed_capacity(running: Any) -> None:
    _consumer, own, port = running
    wait_for(
        lambda: sum(samples(port, "replicator_connector_state").values()) == 1,
        30,
        0.5,
        "the connector's state read once",
    )
    state = {dict(k)["state"]: v for k, v in samples(port, "replicator_connector_state").items()}
    # The shared stack's connector runs; whatever it is doing, exactly one state is set.
    assert sum(state.values()) == 1 and set(state) >= {"RUNNING", "FAILED", "UNKNOWN"}
    assert samples(port, "replicator_slot_active")[()] in (0, 1)
    assert samples(port, "replicator_slot_retained_wal_bytes")[()] >= 0
    assert samples(port, "replicator_slot_probe_failures_total")[()] == 0
    units = {
        dict(k)["table"]: v
        for k, v in samples(port, "replicator_dynamodb_consumed_write_units_total").items()
    }
    for mapping in own.tables:
        assert units[mapping.name] >= 8 * WAVES  # one unit per PutItem of a small item
    throttled = samples(port, "replicator_dynamodb_throttled_requests_total")
    assert set(throttled.values()) == {0.0}  # the local endpoint never throttles


def test_status_page_in_headless_chromium(running: Any, tmp_path: Path) -> None:
    _consumer, own, port = running
    url = f"http://127.0.0.1:{port}/"
    shot = tmp_path / "status.png"
    done = chromium(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,900")
    assert shot.exists(), done.stderr[-2000:]
    dom = chromium(url, tmp_path / "profile2", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "<title>replicator status</title>" in page
    assert 'id="ready">ready<' in page and 'id="live">live<' in page
    for mapping in own.tables:
        assert f"<h2>{mapping.name}</h2>" in page
    assert page.count("<polyline") == 2 * len(own.tables)

    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 900)
    lag = pixels_near(image, LAG_COLOUR)
    speed = pixels_near(image, SPEED_COLOUR)
    # Both series are drawn, for every table: lag charts on the left, throughput on the right.
    assert len(lag) > 150 and len(speed) > 150, (len(lag), len(speed))
    assert max(x for x, _ in lag) < 480 < min(x for x, _ in speed)
    assert len({y // 100 for _, y in lag}) >= len(own.tables)  # one chart per table, stacked
    # Not flat lines: the backlog drained (lag fell) and the waves came and went.
    for series in (lag, speed):
        first_chart = [(x, y) for x, y in series if y < min(y for _, y in series) + 100]
        ys = {y for _, y in first_chart}
        assert max(ys) - min(ys) > 15, sorted(ys)


def test_lag_and_status_screens_read_every_source(running: Any) -> None:
    consumer, own, port = running
    config = consumer.config
    url = f"http://127.0.0.1:{port}/metrics"
    done = cli(config, "lag", "--json", "--window", "2", "--metrics-url", url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["consumer_reachable"] is True
    assert [t["table"] for t in report["tables"]] == [m.name for m in own.tables]
    for table in report["tables"]:
        assert table["phase"] in {"unknown", "postgres-only", "dual-write", "hybrid-read"} or table[
            "phase"
        ].endswith("-only")
        assert table["connector"] in {"RUNNING", "PAUSED", "FAILED", "UNASSIGNED", "RESTARTING"}
        # Its own group; others may be writing to the tables right now.
        assert isinstance(table["lag_events"], int) and table["lag_events"] >= 0
        assert isinstance(table["lag_seconds"], float)
        assert table["p50_s"] is not None and table["p99_s"] >= table["p50_s"] > 0
        assert table["events_per_s"] is not None
    assert report["slot"] is None or report["slot"]["retained_wal_bytes"] >= 0

    done = cli(config, "status", "--json", "--window", "1", "--metrics-url", url)
    status = json.loads(done.stdout)
    (probe,) = status["probes"].values()
    assert probe == {"live": True, "ready": True}
    healthy = (
        status["connector"]["state"] == "RUNNING"
        and status["connector"]["tasks"]
        and all(s == "RUNNING" for s in status["connector"]["tasks"])
        and status["slot"] is not None
        and status["slot"]["active"]
    )
    assert done.returncode == (0 if healthy else 1), done.stderr

    one = own.tables[-1]
    done = cli(
        config, "lag", "--json", "--window", "1", "--table", one.source, "--metrics-url", url
    )
    assert [t["table"] for t in json.loads(done.stdout)["tables"]] == [one.name]

    done = cli(config, "lag", "--metrics-url", url)
    assert done.returncode == 0, done.stderr
    for mapping in own.tables:
        assert mapping.name in done.stdout
    assert re.search(r"consumer lag +\d+ events", done.stdout), done.stdout
    assert "p50" in done.stdout and "events/s consumed" in done.stdout


def test_lag_without_a_consumer_says_so(running: Any) -> None:
    consumer, _own, _port = running
    closed = free_port()
    done = cli(consumer.config, "lag", "--json", "--metrics-url", f"http://127.0.0.1:{closed}/m")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["consumer_reachable"] is False
    assert any(e.startswith("no consumer reachable") for e in report["errors"])
    assert all(t["lag_events"] is not None for t in report["tables"])  # Kafka still answers
    text = cli(consumer.config, "lag", "--metrics-url", f"http://127.0.0.1:{closed}/m")
    assert "no consumer reachable" in text.stdout


def test_lag_watch_refreshes_until_interrupted(running: Any) -> None:
    consumer, own, port = running
    controller, terminal = pty.openpty()  # a terminal: rich's Live redraws in place
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "replicator.cli",
            "--config",
            str(consumer.config),
            "lag",
            "--watch",
            "--interval",
            "0.5",
            "--metrics-url",
            f"http://127.0.0.1:{port}/metrics",
        ],
        stdout=terminal,
        stderr=terminal,
        cwd=ROOT,
        # faulthandler: if it ever hangs, SIGABRT below prints where every thread was
        env={**os.environ, "COLUMNS": "100", "LINES": "60", "PYTHONFAULTHANDLER": "1"},
    )
    os.close(terminal)
    output = bytearray()

    def read_for(seconds: float, enough: Callable[[], bool]) -> None:
        """Read the terminal as a terminal does, all the time: a pty nobody reads fills up
        with redraws and blocks the writer."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not enough():
            if select.select([controller], [], [], 0.2)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: every writer to the terminal has closed it
                    chunk = b""
                if chunk:
                    output.extend(chunk)
                    continue
                time.sleep(0.05)

    def refreshes() -> int:  # distinct data, not one frame redrawn
        return len(set(re.findall(rb"as of (\S+)", bytes(output))))

    try:
        read_for(30, lambda: refreshes() >= 3)
        proc.send_signal(signal.SIGINT)
        read_for(20, lambda: proc.poll() is not None)
        read_for(1, lambda: False)  # what it wrote last
        if proc.poll() is None:
            proc.send_signal(signal.SIGABRT)
            read_for(5, lambda: False)
            pytest.fail(
                "lag --watch still ran 20 s after SIGINT; its last output and threads:\n"
                + bytes(output).decode(errors="replace")[-6000:]
            )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(controller)
    text = bytes(output).decode(errors="replace")
    assert refreshes() >= 3, text[-3000:]  # gathered again and redrawn, not printed once
    assert own.tables[0].name in text
    assert proc.returncode == 130 and "interrupted" in text and "Traceback" not in text


def test_cost_from_the_consumers_consumed_capacity(running: Any) -> None:
    consumer, own, port = running
    done = cli(
        consumer.config, "cost", "--json", "--metrics-url", f"http://127.0.0.1:{port}/metrics"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["basis"] == "lifetime of the processes"
    assert report["prices"]["write_per_million"] == 0.625
    by_table = {t["table"]: t for t in report["tables"]}
    assert set(by_table) == {m.name for m in own.tables}
    for row in by_table.values():
        assert row["write_units_per_s"] > 0
        assert row["write_usd_month"] == pytest.approx(
            row["write_units_per_s"] * 3600 * 730 / 1e6 * 0.625
        )
        assert row["read_units_per_s"] is None  # the consumer reads nothing from DynamoDB
        assert row["storage_bytes"] is not None  # DescribeTable answered
    assert report["total_usd_month"] == pytest.approx(
        sum(t["total_usd_month"] for t in report["tables"])
    )
    # Over a measured window instead (others' writes may or may not fall in it).
    done = cli(
        consumer.config,
        "cost",
        "--json",
        "--window",
        "2",
        "--metrics-url",
        f"http://127.0.0.1:{port}/metrics",
    )
    assert done.returncode == 0, done.stderr
    window = json.loads(done.stdout)
    assert window["basis"] == "window of 2 s"
    assert all(t["write_units_per_s"] >= 0 for t in window["tables"])
