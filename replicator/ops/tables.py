"""Create the DynamoDB tables (keys, GSIs, TTL) that the mappings describe.

A table records the shard count its items are keyed for (a tag, ``replicator:shards``): a
mapping's ``shards`` changes every partition key value, not the key schema, so a table of
another count would take the writes and answer reads from half its items. Such a table is
refused; re-sharding is a backfill into a new table (docs/runbooks/resharding.md).
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from replicator.core.mapping import TableMapping
from replicator.errors import ReplicatorError
from replicator.stream.layout import RUNBOOK, SHARDS_TAG, table_shards


def table_definition(mapping: TableMapping) -> dict[str, Any]:
    """The CreateTable request for a mapping (on-demand capacity)."""
    types: dict[str, str] = {mapping.partition_key.attribute: mapping.partition_key.type}
    key_schema = [{"AttributeName": mapping.partition_key.attribute, "KeyType": "HASH"}]
    if mapping.sort_key:
        types[mapping.sort_key.attribute] = mapping.sort_key.type
        key_schema.append({"AttributeName": mapping.sort_key.attribute, "KeyType": "RANGE"})
    indexes = []
    for index in mapping.indexes:
        types[index.partition_key.attribute] = index.partition_key.type
        schema = [{"AttributeName": index.partition_key.attribute, "KeyType": "HASH"}]
        if index.sort_key:
            types[index.sort_key.attribute] = index.sort_key.type
            schema.append({"AttributeName": index.sort_key.attribute, "KeyType": "RANGE"})
        projection: dict[str, Any] = {"ProjectionType": index.projection}
        if index.projection == "INCLUDE":
            projection["NonKeyAttributes"] = list(index.non_key_attributes)
        indexes.append({"IndexName": index.name, "KeySchema": schema, "Projection": projection})
    request: dict[str, Any] = {
        "TableName": mapping.name,
        "AttributeDefinitions": [
            {"AttributeName": n, "AttributeType": t} for n, t in sorted(types.items())
        ],
        "KeySchema": key_schema,
        "BillingMode": "PAY_PER_REQUEST",
        "Tags": [{"Key": SHARDS_TAG, "Value": str(mapping.shards)}],
    }
    if indexes:
        request["GlobalSecondaryIndexes"] = indexes
    return request


def ensure_table(client: Any, mapping: TableMapping) -> str:
    """Create the table if missing, check its key if present, enable TTL. Returns what it did."""
    try:
        try:
            existing = client.describe_table(TableName=mapping.name)["Table"]
        except client.exceptions.ResourceNotFoundException:
            existing = None
        if existing is None:
            client.create_table(**table_definition(mapping))
            client.get_waiter("table_exists").wait(
                TableName=mapping.name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
            did = "created"
        else:
            want = table_definition(mapping)["KeySchema"]
            if existing["KeySchema"] != want:
                raise ReplicatorError(
                    f"table {mapping.name} exists with key "
                    f"{existing['KeySchema']}, the mapping wants {want}"
                )
            _check_shards(client, mapping, existing["TableArn"])
            did = "exists"
        ttl = client.describe_time_to_live(TableName=mapping.name)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            client.update_time_to_live(
                TableName=mapping.name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": mapping.ttl_attribute},
            )
        return did
    except (ClientError, BotoCoreError) as exc:
        raise ReplicatorError(f"DynamoDB table {mapping.name}: {exc}") from exc


def shards_refusal(mapping: TableMapping, recorded: int | None, empty: bool) -> str | None:
    """Why a table whose tag says ``recorded`` shards (None: no tag, a table made before
    shards existed, keyed unsharded) may not serve the mapping, or None. Pure."""
    if recorded == mapping.shards or (recorded is None and (mapping.shards == 1 or empty)):
        return None
    held = f"is keyed for shards: {recorded}" if recorded else "holds unsharded items (no tag)"
    return (
        f"table {mapping.name} {held}, the mapping says shards: {mapping.shards}; every "
        f"partition key would differ. Re-shard by a backfill into a new table ({RUNBOOK}), "
        "or put shards back"
    )


def _check_shards(client: Any, mapping: TableMapping, arn: str) -> None:
    found = table_shards(client, mapping.name)
    recorded = found[1] if found else None
    empty = False
    if recorded is None and mapping.shards > 1:
        empty = not client.scan(TableName=mapping.name, Limit=1, Select="COUNT").get("Count")
    refusal = shards_refusal(mapping, recorded, empty)
    if refusal:
        raise ReplicatorError(refusal)
    if recorded is None:  # from now on the table says what it holds
        client.tag_resource(
            ResourceArn=arn, Tags=[{"Key": SHARDS_TAG, "Value": str(mapping.shards)}]
        )
