"""The real stack, started once per test session: PostgreSQL, Kafka (KRaft), Kafka Connect with
Debezium, and the DynamoDB endpoint. A test that needs it fails (never skips) if it cannot start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from replicator.cli._common import connector_payload
from replicator.config import Settings, load_settings
from replicator.ops.connector import ConnectClient
from replicator.ops.tables import ensure_table
from replicator.stack import LocalStack
from replicator.stream.dynamo import dynamodb_client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(None)


@pytest.fixture(scope="session")
def stack(settings: Settings) -> LocalStack:
    local = LocalStack(settings, say=lambda text: print(f"[stack] {text}", flush=True))
    local.up()
    client = ConnectClient(settings)
    client.apply(connector_payload(settings))
    client.wait_running(timeout_s=120)
    return local


@pytest.fixture(scope="session")
def pg(stack: LocalStack, settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def dynamodb(stack: LocalStack, settings: Settings) -> Any:
    return dynamodb_client(settings.dynamodb)


class Consumer:
    """`replicator run` as a child process, so tests can SIGKILL or SIGTERM it."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "replicator.cli", "--config", str(self.config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=config_only_env(),
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def config_only_env() -> dict[str, str]:
    """The environment without REPLICATOR_* settings: a consumer's config file holds every
    setting already, and the environment wins over the file, so a stack moved by environment
    (other ports, another home) would undo a test's own settings (an endpoint, a group)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}


@pytest.fixture(scope="session")
def consumer_factory(
    stack: LocalStack, settings: Settings, dynamodb: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., tuple[Consumer, Settings]]]:
    """Make a consumer over its own DynamoDB tables (names + suffix) and its own group, so tests
    do not see each other's writes. Returns the consumer and its settings."""
    made: list[Consumer] = []

    def make(
        suffix: str,
        change: Callable[[dict[str, Any]], None] | None = None,
        keep_tables: bool = False,
    ) -> tuple[Consumer, Settings]:
        folder = tmp_path_factory.mktemp(f"consumer{suffix}")  # numbered: a new folder each time
        data = settings.model_dump(mode="json")
        for section in ("postgres",):
            for secret in ("password", "replication_password"):
                data[section][secret] = getattr(settings.postgres, secret).get_secret_value()
        data["dynamodb"]["secret_access_key"] = (
            settings.dynamodb.secret_access_key.get_secret_value()
        )  # type: ignore[union-attr]
        data["kafka"]["group_id"] = f"test{suffix}-{uuid.uuid4().hex[:8]}"
        # A SIGKILLed member holds its partitions until its session times out (45 s default).
        data["kafka"]["extra"] = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
        # Any free port: consumers of concurrent tests must not fight over 9108.
        data["metrics"]["port"] = 0
        data["stack"]["home"] = str(settings.stack.home.resolve())
        data["connector"]["template"] = str(ROOT / "connectors" / "postgres-source.json")
        for table in data["tables"]:
            table["name"] = f"{table['name']}{suffix}"
        if change is not None:
            change(data)
        config = folder / "replicator.yaml"
        config.write_text(yaml.safe_dump(data))
        own = load_settings(config)
        for mapping in own.tables:  # fresh tables: no test sees another session's items
            if not keep_tables:
                with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
                    dynamodb.delete_table(TableName=mapping.name)
            ensure_table(dynamodb, mapping)
        consumer = Consumer(config, stack.logs / f"consumer{suffix}.log")
        made.append(consumer)
        return consumer, own

    yield make
    for consumer in made:
        if consumer.alive():
            consumer.stop()
