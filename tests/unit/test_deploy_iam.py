"""deploy/iam: least-privilege policies that grant exactly the DynamoDB operations the code makes,
on exactly the mapped tables. The operations are read off the source (boto3 method calls,
operation names sent on the wire, paginators and waiters, transaction actions), per command:
`run` (replicator.stream.pipeline and what it imports), `tables create` (replicator.ops.tables)
and the read path (replicator.reads.*)."""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
from botocore import xform_name

from replicator.config import default_tables

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "replicator"
IAM = ROOT / "deploy" / "iam"
# Operations only `replicator demo` makes, against the local stack (it counts items with Scan).
LOCAL_ONLY = {"Scan"}
# TransactWriteItems has no IAM action of its own: each action in it is authorised as the
# operation it performs.
TRANSACTION_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


@cache
def _operations() -> dict[str, str]:
    """Every DynamoDB operation botocore knows, by its snake_case method name."""
    model = botocore.session.get_session().get_service_model("dynamodb")
    return {xform_name(name): name for name in model.operation_names}


@cache
def _waiters() -> dict[str, str]:
    model = botocore.session.get_session().get_waiter_model("dynamodb")
    return {xform_name(name): model.get_waiter(name).operation for name in model.waiter_names}


def _module_path(name: str) -> Path:
    relative = Path(*name.split("."))
    package = ROOT / relative / "__init__.py"
    return package if package.exists() else ROOT / relative.with_suffix(".py")


def _imports(tree: ast.AST) -> set[str]:
    """replicator modules a module imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("replicator")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("replicator"):
            found.add(node.module or "")
            for alias in node.names:  # `from replicator import checkpoint`
                if _module_path(f"{node.module}.{alias.name}").exists():
                    found.add(f"{node.module}.{alias.name}")
    return found


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or not _module_path(name).exists():
            continue
        seen.add(name)
        todo += _imports(ast.parse(_module_path(name).read_text()))
    return seen


def _actions_in(path: Path) -> set[str]:
    """IAM actions (without the dynamodb: prefix) for the DynamoDB operations a module makes."""
    operations, waiters = _operations(), _waiters()
    names = set(operations.values())
    actions: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, args = node.func.attr, node.args
            if method in operations:  # client.put_item(...)
                actions.add(operations[method])
            first = args[0] if args and isinstance(args[0], ast.Constant) else None
            if method == "get_paginator" and first is not None:
                actions.add(operations[first.value])
            if method == "get_waiter" and first is not None:
                actions.add(waiters[first.value])
        elif isinstance(node, ast.Constant) and node.value in names:  # sent on the wire
            actions.add(node.value)
        elif isinstance(node, ast.Dict):  # {"Put": {...}} actions of TransactWriteItems
            for key in node.keys:
                if isinstance(key, ast.Constant) and key.value in TRANSACTION_ACTIONS:
                    actions.add(TRANSACTION_ACTIONS[key.value])
    if "TransactWriteItems" in actions:
        actions.discard("TransactWriteItems")
    return actions


def _actions_of(module: str) -> dict[str, set[str]]:
    return {name: _actions_in(_module_path(name)) for name in sorted(_closure(module))}


def _policy(name: str) -> dict[str, Any]:
    return json.loads((IAM / name).read_text())


def _granted(policy: dict[str, Any]) -> tuple[set[str], set[str]]:
    actions: set[str] = set()
    resources: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}
        actions |= set(statement["Action"])
        resources |= set(statement["Resource"])
    return actions, resources


def _table_arns() -> set[str]:
    return {f"arn:aws:dynamodb:REGION:ACCOUNT_ID:table/{t.name}" for t in default_tables()}


def test_the_consumer_policy_grants_exactly_what_run_does() -> None:
    # The pipeline, and the check app.pipeline makes before it starts (the tables' shard tags).
    used = set().union(
        *_actions_of("replicator.stream.pipeline").values(),
        *_actions_of("replicator.stream.layout").values(),
    )
    actions, resources = _granted(_policy("replicator-consumer.json"))
    assert actions == {f"dynamodb:{a}" for a in used}
    # Guarded puts, marker puts, TOAST-keeping updates; and the batch lane's puts, which the
    # same clients send for a backfill into a table nobody reads (replicator.stream.batch);
    # at start, the shard count each table records.
    assert used == {
        "PutItem",
        "UpdateItem",
        "BatchWriteItem",
        "DescribeTable",
        "ListTagsOfResource",
    }
    assert resources == _table_arns()


def test_the_tables_policy_grants_exactly_what_tables_create_does() -> None:
    used = set().union(*_actions_of("replicator.ops.tables").values())
    actions, resources = _granted(_policy("replicator-tables-admin.json"))
    assert actions == {f"dynamodb:{a}" for a in used}
    assert "CreateTable" in used and "UpdateTimeToLive" in used
    assert resources == _table_arns()


def _index_arns() -> set[str]:
    return {
        f"arn:aws:dynamodb:REGION:ACCOUNT_ID:table/{t.name}/index/{i.name}"
        for t in default_tables()
        for i in t.indexes
    }


def test_the_reader_policy_grants_exactly_what_the_read_path_does() -> None:
    # The read path's own modules (their imports would bring in the sink's writes through a
    # shared constant): library and HTTP API.
    used: set[str] = set()
    for module in sorted((PACKAGE / "reads").glob("*.py")):
        used |= _actions_in(module)
    actions, resources = _granted(_policy("replicator-reader.json"))
    assert actions == {f"dynamodb:{a}" for a in used}
    assert used == {"GetItem", "Query", "BatchGetItem"}
    assert resources == _table_arns() | _index_arns()
    for statement in _policy("replicator-reader.json")["Statement"]:
        if any("/index/" in r for r in statement["Resource"]):
            assert statement["Action"] == ["dynamodb:Query"]  # an index only answers queries


def test_every_dynamodb_operation_in_the_code_is_in_a_policy() -> None:
    granted = set()
    for name in (
        "replicator-consumer.json",
        "replicator-tables-admin.json",
        "replicator-reader.json",
    ):
        granted |= {a.removeprefix("dynamodb:") for a in _granted(_policy(name))[0]}
    missing = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        extra = _actions_in(path) - granted - LOCAL_ONLY
        if extra:
            missing[str(path.relative_to(ROOT))] = sorted(extra)
    assert not missing, (
        f"DynamoDB operations no policy in deploy/iam grants: {missing}; add them to the policy "
        "of the command that makes them (or to LOCAL_ONLY if only the local stack does)"
    )


def test_policies_are_valid_policy_documents_without_wildcards() -> None:
    for path in sorted(IAM.glob("*.json")):
        policy = json.loads(path.read_text())
        assert policy["Version"] == "2012-10-17", path.name
        for statement in policy["Statement"]:
            for value in [*statement["Action"], *statement["Resource"]]:
                assert "*" not in value, f"{path.name}: {value}"
            for arn in statement["Resource"]:
                # No index ARN: writes maintain indexes without permissions on them; only a
                # Query or Scan of an index would need table/NAME/index/INDEX (the reader's).
                if "/index/" in arn:
                    assert path.name == "replicator-reader.json" and arn in _index_arns(), arn


def test_the_scan_finds_what_it_should() -> None:
    # The scanner itself, on the modules whose calls are known: a guard against a scan that
    # finds nothing and so passes everything.
    assert _actions_in(PACKAGE / "ops" / "tables.py") == {
        "CreateTable",
        "DescribeTable",
        "DescribeTimeToLive",
        "UpdateTimeToLive",
        "TagResource",  # the shard count a table is keyed for (read in replicator.stream.layout)
        "Scan",  # one item: whether an untagged table is empty
    }
    assert "replicator.stream.sink" in _closure("replicator.stream.pipeline")
    assert _actions_in(PACKAGE / "stream" / "layout.py") == {"DescribeTable", "ListTagsOfResource"}
    assert "replicator.ops.tables" not in _closure("replicator.stream.pipeline")
