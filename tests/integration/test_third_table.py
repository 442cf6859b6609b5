"""A table that is not in the design replicates with configuration only: a mapping in the
settings file, the table in the publication, and the connector re-applied. The table keeps
REPLICA IDENTITY DEFAULT, so an UPDATE that leaves its large text column alone arrives with
Debezium's unavailable-value placeholder, and the stored value must be kept. Its read patterns
are declared in the same mapping: the read API and `replicator read` serve them from both
stores with identical answers, with no code of their own."""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from replicator.cli._common import connector_payload
from replicator.config import Settings
from replicator.ops.connector import ConnectClient
from replicator.ops.phases import PhaseStore
from replicator.reads.api import ReadApi
from replicator.reads.router import ReadPath
from tests.integration.helpers import caught_up, get_item, normalized, visible, wait_for

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
        {"name": "score", "attribute": "Score", "type": "decimal", "scale": 2},
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
    # Read patterns as data: routes, OpenAPI, `replicator read` and validate come from these.
    "reads": {
        "show": ["CreatedAt", "NoteId", "ApplicationId", "Author", "Score"],
        "patterns": [
            {
                "name": "notes_of_application",
                "path": "/notes/by-application/{application_id}",
                "summary": "Notes of an application, newest first, optionally in [start, end)",
                "param": {"name": "application_id", "column": "applicationid"},
                "index": "ByApplication",
                "partition": "APP#{application_id}",
                "order": "AppSK",
                "range": {"column": "createdat", "required": False},
            },
            {
                "name": "note_by_id",
                "cli": "note",
                "path": "/notes/{note_id}",
                "summary": "One note by NoteId",
                "param": {"name": "note_id", "column": "noteid"},
                "single": True,
            },
        ],
    },
}


def body(response: httpx.Response) -> Any:
    return json.loads(response.content, parse_float=Decimal)


def check_reads(own: Settings, config: str, app: int, noteids: list[int]) -> None:
    """The notes through the API (postgres-only, then dynamodb-only) and the CLI (each store
    named): the same answers everywhere, as the declarations say."""
    table = "ApplicationNotes_third"
    phases = PhaseStore(own)
    path = ReadPath(own, phases)
    server = ReadApi(path, port=0).start()
    urls = [
        f"/notes/by-application/{app}",
        f"/notes/by-application/{app}?limit=2",
        f"/notes/by-application/{app}?start=2024-05-05&end=2024-05-06",
        *[f"/notes/{n}" for n in noteids],
    ]
    try:
        wait_for(  # the index is eventually consistent
            lambda: (
                path.postgres.read("notes_of_application", app)
                == path.dynamo.read("notes_of_application", app)
            ),
            60,
            what="notes in the index",
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
            spec = body(client.get("/openapi.json"))
            assert {"/notes/by-application/{application_id}", "/notes/{note_id}"} <= set(
                spec["paths"]
            )
            score = spec["components"]["schemas"][f"{table}Row"]["properties"]["Score"]
            assert score["type"] == "number" and score["x-scale"] == 2
            answers = {}
            for url in urls:
                response = client.get(url)
                assert response.status_code == 200, (url, response.text[:300])
                assert response.headers["X-Read-Source"] == "postgres"
                answers[url] = body(response)
            listing = answers[urls[0]]
            # numeric(5,2) keeps its scale: 250.00 and 0.10, never 250 or 0.1.
            text = client.get(urls[0]).content
            assert b'"Score":250.00' in text and b'"Score":0.10' in text
            assert [r["NoteId"] for r in listing["items"]] == sorted(noteids, reverse=True)
            paged = answers[urls[1]]
            assert paged["items"] == listing["items"][:2] and paged["next"]
            rest = body(client.get(f"{urls[1]}&cursor={paged['next']}"))
            assert paged["items"] + rest["items"] == listing["items"]
            assert client.get("/notes/by-application/x").status_code == 400
            assert client.get(f"/notes/{2**62}").json()["error"] == "not_found"
            phases.set(table, "dynamodb-only", who="test_third_table", why="reads", force=True)
            time.sleep(own.reads.cache_s + 0.2)
            for url in urls:
                response = client.get(url)
                assert response.status_code == 200, (url, response.text[:300])
                assert response.headers["X-Read-Source"] == "dynamodb"
                assert body(response) == answers[url], url
            # A cursor made on DynamoDB continues the listing on PostgreSQL.
            cursor = body(client.get(urls[1]))["next"]
            phases.set(table, "postgres-only", who="test_third_table", why="reads done")
            time.sleep(own.reads.cache_s + 0.2)
            assert body(client.get(f"{urls[1]}&cursor={cursor}")) == rest
    finally:
        server.close()
        path.close()
        phases.close()

    def cli(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "replicator.cli", "--config", config, "read", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    for args in (("notes-of-application", str(app)), ("note", str(noteids[0]))):
        printed = [
            json.loads(cli(*args, "--json", "--store", store), parse_float=Decimal)
            for store in ("postgres", "dynamodb")
        ]
        assert printed[0].pop("source") == "postgres" and printed[1].pop("source") == "dynamodb"
        assert printed[0] == printed[1], args
    assert str(noteids[0]) in cli("note", str(noteids[0]), "--store", "dynamodb")


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
        # A new group reads the design tables' history first (long on a stack that has run
        # many tests): the waits below time this table's rows only, not that backlog.
        design = [own.topic_of(m) for m in own.tables if m.name != "ApplicationNotes_third"]
        wait_for(
            lambda: caught_up(own.kafka.bootstrap_servers, own.kafka.group_id, design),
            600,
            interval_s=1.0,
            what="consumer caught up with the design tables' history",
        )
        # Debezium restarts its task on the new config; wait until it streams the table.
        body = secrets.token_hex(60_000)  # 120 KB that barely compresses: stored out of line
        app = random.randint(1_000_000, 2**31 - 1)  # this run's own: earlier notes stay out
        noteid = pg.execute(
            "INSERT INTO dbo.applicationnotes (applicationid, author, body, "
            "score, createdat) VALUES (%s, 'Åsa 🦉', %s, 7.50, "
            "'2024-05-05 05:05:05.000005') RETURNING noteid",
            [app, body],
        ).fetchone()[0]
        key = {"NoteId": {"N": str(noteid)}}
        sk = f"2024-05-05T05:05:05.000005Z#{noteid:019d}"
        expected = {
            "NoteId": {"N": str(noteid)},
            "ApplicationId": {"N": str(app)},
            "Author": {"S": "Åsa 🦉"},
            "Body": {"S": body},
            "Score": {"N": "7.50"},
            "CreatedAt": {"S": "2024-05-05T05:05:05.000005Z"},
            "AppPK": {"S": f"APP#{app}"},
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

        # Two more notes of the application (one on another day), then the reads.
        others = [
            pg.execute(
                "INSERT INTO dbo.applicationnotes (applicationid, author, body, score, createdat) "
                "VALUES (%s, 'Bo', 'short', %s, %s) RETURNING noteid",
                [app, score, when],
            ).fetchone()[0]
            for score, when in (("250.00", "2024-05-05 06:00:00"), ("0.10", "2024-05-07 00:00:00"))
        ]
        for other in others:
            other_key = {"NoteId": {"N": str(other)}}
            wait_for(
                lambda k=other_key: visible(get_item(dynamodb, table, k)), 60, what="more notes"
            )
        check_reads(own, str(consumer.config), app, [noteid, *others])

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
