"""A source of its own for tests that need a connector created on a database that already
holds rows (the shared connector exists from the session's start): a database with the
design's schema, its own publication, slot, connector name and topic prefix. ``drop`` removes
all of it (connector, slot, publication, database, topics): a leftover inactive slot would
retain WAL forever."""

from __future__ import annotations

import contextlib
import time
import uuid
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from replicator.cli._common import connector_payload
from replicator.config import Settings
from replicator.ops.connector import ConnectClient
from replicator.ops.postgres import prepare


class SecondSource:
    def __init__(self, settings: Settings, tag: str) -> None:
        self.tag = f"{tag}{uuid.uuid4().hex[:6]}"
        self.base = settings
        self.settings = settings.model_copy(
            update={
                "postgres": settings.postgres.model_copy(update={"database": f"loans_{self.tag}"}),
                "connector": settings.connector.model_copy(
                    update={
                        "name": f"loans-{self.tag}",
                        "topic_prefix": self.tag,
                        "slot_name": f"replicator_{self.tag}",
                        "publication_name": f"replicator_pub_{self.tag}",
                    }
                ),
            }
        )

    @property
    def dsn(self) -> str:
        return self.settings.postgres.dsn()

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.base.postgres.dsn(), autocommit=True)

    def create(self) -> None:
        """The database, the source schema and what CDC needs (no connector yet)."""
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {}").format(
                    sql.Identifier(self.settings.postgres.database)
                )
            )
        schema = resources.files("replicator.stack").joinpath("sql", "source_schema.sql")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(schema.read_text())
            prepare(self.settings, conn)

    def start_connector(self) -> None:
        client = ConnectClient(self.settings)
        client.apply(connector_payload(self.settings))
        client.wait_running(timeout_s=120)

    def consumer_config(self, data: dict[str, Any]) -> None:
        """For consumer_factory(change=...): read this source's topics and database."""
        data["postgres"]["database"] = self.settings.postgres.database
        for field in ("name", "topic_prefix", "slot_name", "publication_name"):
            data["connector"][field] = getattr(self.settings.connector, field)

    def topics(self) -> list[str]:
        return [self.settings.topic_of(m) for m in self.settings.tables]

    def topic_records(self, topic: str) -> int:
        """Records in a topic (sum of high watermarks; nothing is compacted away this soon)."""
        from confluent_kafka import Consumer, TopicPartition

        probe = Consumer(
            {"bootstrap.servers": self.base.kafka.bootstrap_servers, "group.id": "probe"}
        )
        try:
            metadata = probe.list_topics(topic, timeout=10).topics[topic]
            if metadata.error is not None:
                return 0
            return sum(
                probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in metadata.partitions
            )
        finally:
            probe.close()

    def drop(self) -> None:
        """Connector, slot, publication, database and topics; each step even if one failed."""
        errors: list[str] = []
        with contextlib.suppress(Exception):
            ConnectClient(self.settings).delete()
        slot = self.settings.connector.slot_name
        with self._admin() as conn:
            # The connector's walsender ends shortly after the delete; the slot can be dropped
            # once inactive.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = %s",
                    [slot],
                ).fetchone()
                if row is None:
                    break
                if not row[0]:
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                        break
                    except psycopg.Error as exc:
                        errors.append(str(exc))
                time.sleep(0.5)
            else:
                errors.append(f"slot {slot} still active after 60 s")
            try:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.settings.postgres.database)
                    )
                )
            except psycopg.Error as exc:
                errors.append(str(exc))
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.base.kafka.bootstrap_servers})
        existing = admin.list_topics(timeout=10).topics
        doomed = [
            t for t in existing if t.startswith(f"{self.tag}.") or t.endswith(f".{self.tag}")
        ]  # the tables' topics and Debezium's heartbeat topic
        if doomed:
            for future in admin.delete_topics(doomed, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result()
        assert not errors, f"cleaning up {self.tag}: {errors}"

    def assert_no_slot(self) -> None:
        with self._admin() as conn:
            left = conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s",
                [self.settings.connector.slot_name],
            ).fetchall()
        assert not left, f"replication slot left behind: {left}"
