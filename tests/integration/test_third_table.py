"""A table that is not in the design replicates with configuration only: a mapping in the
settings file, the table in the publication, and the connector re-applied. The table keeps
REPLICA IDENTITY DEFAULT, so an UPDATE that leaves its large text column alone arrives with
Debezium's unavailable-value placeholder, and the stored value must be kept."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest

from replicator.cli._common import connector_payload
from replicator.config import Settings
from replicator.ops.connector import ConnectClient
from tests.integration.helpers import get_item, normalized, visible, wait_for

pytestmark = pytest.mark.stack

NOTES = {
    "name": "ApplicationNotes",
    "source": "dbo.applicationnotes",
    "primary_key": ["noteid"],
    "partition_key": {"attribute": "NoteId", "type": "N", "template": "{noteid}"},
    "columns": [
        {"name": "noteid", "attribute": "NoteId", "type": "bigint"},
        {"name": "applicationid", "attribute": "ApplicationId", "type": "int"},
        {"name": "author", "attribute": "Author", "type": "text"},
        {"name": "body", "attribute": "Body", "type": "text"},
        {"name": "score", "attribute": "Score", "type": "decimal"},
        {"name": "createdat", "attribute": "CreatedAt", "type": "timestamp"},
    ],
    "derived": [
        {"attribute": "AppPK", "template": "APP#{applicationid}"},
        {"attribute": "AppSK", "template": "{createdat}#{noteid:019}"},
    ],
    "indexes": [
        {
            "name": "ByApplication",
            "partition_key": {"attribute": "AppPK"},
            "sort_key": {"attribute": "AppSK"},
        }
    ],
}


def test_third_table_replicates_from_configuration_and_keeps_toasted_values(
    consumer_factory: Any, settings: Settings, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    # What a DBA does for a new table: create it (here) and publish it to the slot.
    pg.execute(
        "CREATE TABLE IF NOT EXISTS dbo.applicationnotes (noteid bigserial PRIMARY KEY, "
        "applicationid int NOT NULL, author varchar(100), body text, score numeric(5,2), "
        "createdat timestamp NOT NULL DEFAULT now())"
    )
    pg.execute("ALTER TABLE dbo.applicationnotes REPLICA IDENTITY DEFAULT")
    pg.execute("GRANT SELECT ON dbo.applicationnotes TO debezium")
    published = pg.execute(
        "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND tablename = 'applicationnotes'",
        [settings.connector.publication_name],
    ).fetchone()
    if not published:
        pg.execute(
            f"ALTER PUBLICATION {settings.connector.publication_name} "
            "ADD TABLE dbo.applicationnotes"
        )

    def add_notes(data: dict[str, Any]) -> None:
        data["tables"].append({**NOTES, "name": "ApplicationNotes_third"})

    consumer, own = consumer_factory("_third", add_notes)
    client = ConnectClient(own)
    client.apply(connector_payload(own))  # the include list now names the third table
    client.wait_running()
    try:
        consumer.start()
        # Debezium restarts its task on the new config; wait until it streams the table.
        body = secrets.token_hex(60_000)  # 120 KB that barely compresses: stored out of line
        noteid = pg.execute(
            "INSERT INTO dbo.applicationnotes (applicationid, author, body, "
            "score, createdat) VALUES (42, 'Åsa 🦉', %s, 7.50, "
            "'2024-05-05 05:05:05.000005') RETURNING noteid",
            [body],
        ).fetchone()[0]
        key = {"NoteId": {"N": str(noteid)}}
        sk = f"2024-05-05T05:05:05.000005Z#{noteid:019d}"
        expected = {
            "NoteId": {"N": str(noteid)},
            "ApplicationId": {"N": "42"},
            "Author": {"S": "Åsa 🦉"},
            "Body": {"S": body},
            "Score": {"N": "7.50"},
            "CreatedAt": {"S": "2024-05-05T05:05:05.000005Z"},
            "AppPK": {"S": "APP#42"},
            "AppSK": {"S": sk},
        }
        table = "ApplicationNotes_third"
        wait_for(
            lambda: normalized(visible(get_item(dynamodb, table, key))) == normalized(expected),
            90,
            what="third-table insert",
        )

        # Only the score changes: the source sends the body as the TOAST placeholder.
        pg.execute(
            "UPDATE dbo.applicationnotes SET score = 9.25, author = NULL WHERE noteid = %s",
            [noteid],
        )
        updated = {k: v for k, v in expected.items() if k != "Author"} | {"Score": {"N": "9.25"}}
        wait_for(
            lambda: normalized(visible(get_item(dynamodb, table, key))) == normalized(updated),
            60,
            what="update that keeps the toasted body",
        )
        stored = get_item(dynamodb, table, key)
        assert stored is not None and "__debezium_unavailable_value" not in str(stored)

        pg.execute("DELETE FROM dbo.applicationnotes WHERE noteid = %s", [noteid])
        wait_for(
            lambda: visible(get_item(dynamodb, table, key)) is None or None,
            60,
            what="delete marker",
        )
    finally:
        assert consumer.stop() == 0
        # Back to the design's two tables for the rest of the session.
        client.apply(connector_payload(settings))
        client.wait_running()
