"""The shard count a DynamoDB table's items are keyed for, recorded on the table (a tag).

A mapping's ``shards`` changes every partition key value, not the key schema: a consumer that
wrote a table of another count would put new items at keys its readers do not ask for old ones
at. ``tables create`` and ``backfill`` tag the tables they make or check
(replicator.ops.tables); ``run`` and ``backfill`` refuse to start over a table whose tag names
another count (``check_shards``).
"""

from __future__ import annotations

from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from replicator.config import Settings
from replicator.core.mapping import TableMapping
from replicator.errors import ReplicatorError

SHARDS_TAG = "replicator:shards"
RUNBOOK = "docs/runbooks/resharding.md"
log = structlog.get_logger("replicator.layout")


def table_shards(client: Any, table: str) -> tuple[str, int | None] | None:
    """(the table's ARN, the shard count its tag records or None when untagged), or None when
    there is no such table."""
    try:
        arn = client.describe_table(TableName=table)["Table"]["TableArn"]
    except client.exceptions.ResourceNotFoundException:
        return None
    tags = client.list_tags_of_resource(ResourceArn=arn).get("Tags", [])
    found = next((t["Value"] for t in tags if t["Key"] == SHARDS_TAG), None)
    if found is None:
        return arn, None
    try:
        return arn, int(found)
    except ValueError:
        raise ReplicatorError(
            f"table {table}: tag {SHARDS_TAG}={found!r} is not a number"
        ) from None


def run_refusal(mapping: TableMapping, recorded: int | None) -> str | None:
    """Why a consumer of the mapping may not write a table tagged ``recorded`` (None:
    untagged), or None. An untagged table is one made before shards existed (unsharded) or by
    hand: a sharded mapping needs ``tables create`` to look at it first. Pure."""
    if recorded == mapping.shards or (recorded is None and mapping.shards == 1):
        return None
    if recorded is None:
        return (
            f"table {mapping.name} records no shard count and the mapping says shards: "
            f"{mapping.shards}: run `replicator tables create`, which tags it when it is empty "
            f"and refuses it when it holds unsharded items ({RUNBOOK})"
        )
    return (
        f"table {mapping.name} is keyed for shards: {recorded}, the mapping says shards: "
        f"{mapping.shards}; every partition key would differ. Re-shard by a backfill into a "
        f"new table ({RUNBOOK}), or put shards back"
    )


def check_shards(settings: Settings, client: Any) -> None:
    """Refuse to write any mapped table keyed for another shard count than its mapping's.
    A table that does not exist is left to the writes to report, and so is a DynamoDB that
    does not answer now (a consumer starts, unready, and retries; it does not die of it)."""
    for mapping in settings.tables:
        try:
            found = table_shards(client, mapping.name)
        except (ClientError, BotoCoreError) as exc:
            log.warning("shard tag not read", table=mapping.name, error=str(exc))
            continue
        if found is None:
            continue
        refusal = run_refusal(mapping, found[1])
        if refusal:
            raise ReplicatorError(refusal)
