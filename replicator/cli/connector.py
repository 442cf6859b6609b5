"""`replicator connector`: the Debezium connector in Kafka Connect."""

from __future__ import annotations

import json
from typing import Annotated

import typer
import yaml
from rich.table import Table

from replicator.cli._common import (
    connector_app,
    connector_payload,
    err,
    friendly,
    out,
    say,
    settings,
)
from replicator.errors import ReplicatorError
from replicator.ops.connector import ConnectClient, kafka_connector_resource


@connector_app.command("show")
@friendly
def connector_show(
    kafka_connector: Annotated[
        str | None,
        typer.Option(
            "--kafka-connector",
            metavar="CONNECT_CLUSTER",
            help="Print it as a Strimzi KafkaConnector resource (YAML) for this KafkaConnect "
            "cluster instead; set connector.password_ref to the secret's reference.",
        ),
    ] = None,
) -> None:
    """Print the connector config that `apply` would send."""
    s = settings()
    if kafka_connector is None:
        out.print_json(json.dumps(connector_payload(s)))
        return

    if s.connector.password_ref is None:
        raise ReplicatorError(
            "connector.password_ref is not set: a KafkaConnector needs the secret's reference "
            "(e.g. '${directory:/mnt/debezium-postgres:password}'), never the secret itself"
        )
    resource = kafka_connector_resource(s, connector_payload(s), kafka_connector)
    typer.echo(yaml.safe_dump(resource, sort_keys=False, width=1000), nl=False)


@connector_app.command("apply")
@friendly
def connector_apply(wait: Annotated[bool, typer.Option(help="Wait until it runs.")] = True) -> None:
    """Create or update the Debezium connector from connectors/ and the settings."""

    s = settings()
    client = ConnectClient(s)
    client.apply(connector_payload(s))
    if wait:
        client.wait_running()
    say(f"connector {s.connector.name} applied")


@connector_app.command("status")
@friendly
def connector_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Connector and task states (exit 1 unless everything is RUNNING)."""

    s = settings()
    status = ConnectClient(s).status()
    if status is None:
        err.print(f"connector {s.connector.name!r} does not exist")
        raise typer.Exit(1)
    if as_json:
        out.print_json(json.dumps(status))
    else:
        table = Table("part", "state", "worker")
        table.add_row(
            "connector", status["connector"]["state"], status["connector"].get("worker_id", "")
        )
        for task in status.get("tasks", []):
            table.add_row(f"task {task['id']}", task["state"], task.get("worker_id", ""))
        out.print(table)
    states = [status["connector"]["state"], *(t["state"] for t in status.get("tasks", []))]
    if any(state != "RUNNING" for state in states):
        raise typer.Exit(1)


@connector_app.command("restart")
@friendly
def connector_restart() -> None:
    """Restart the connector and its tasks."""

    client = ConnectClient(settings())
    client.restart()
    client.wait_running()
    say("connector restarted and running")
