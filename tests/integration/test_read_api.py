"""The HTTP read API over the real stack: every route answers what the read path reads (from
the store the phase names), pagination by cursor, exact JSON numbers, clear 4xx errors, the
OpenAPI description (answers validate against it), /phases, localhost binding, the CLI."""

from __future__ import annotations

import json
import subprocess
import time
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from replicator.observe import cost
from replicator.ops.phases import PhaseStore
from replicator.reads.api import ReadApi, routes, to_json
from replicator.reads.postgres import PostgresReads
from replicator.reads.router import ReadPath
from replicator.stream.dynamo import dynamodb_client
from tests.integration import helpers
from tests.integration.reads_data import (  # noqa: F401 (reads_world is a fixture)
    ReadsWorld,
    reads_world,
    with_dead_dynamodb,
)

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def api(reads_world: ReadsWorld) -> Any:  # noqa: F811
    phases = PhaseStore(reads_world.settings)
    path = ReadPath(reads_world.settings, phases)
    server = ReadApi(path, port=0).start()
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
        yield client, path, phases
    server.close()
    path.close()
    phases.close()


@pytest.fixture(scope="module")
def postgres(reads_world: ReadsWorld) -> Any:  # noqa: F811
    reader = PostgresReads(reads_world.settings)
    yield reader
    reader.close()


def body(response: httpx.Response) -> Any:
    return json.loads(response.content, parse_float=Decimal)


def as_json(value: Any) -> Any:
    return json.loads(to_json(value), parse_float=Decimal)


def samples(w: ReadsWorld) -> list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]:
    """(url, ReadPath method, arguments, keyword arguments) for every route."""
    s, e = w.pay_start.isoformat(), w.pay_end.isoformat()
    day, later = w.log_days[1].isoformat(), w.log_days[4].isoformat()
    loan = w.loans[w.customers[0]][0]

    def listing(url: str, method: str, *args: Any, limit: int = 50) -> Any:
        return (url, method, args, {"limit": limit})

    return [
        listing(f"/logs/by-application/{w.apps[0]}?limit=20", "logs_by_application", w.apps[0],
                limit=20),
        listing(f"/logs/by-service/{w.services[0]}?start={day}&end={later}", "logs_by_service",
                w.services[0], day, later),
        listing(f"/logs/by-correlation/{w.correlations[3]}", "logs_by_correlation",
                w.correlations[3]),
        listing(f"/logs/failures/{day}", "failures_of_day", day),
        (f"/logs/{w.big_log_id}", "log_by_id", (w.big_log_id,), {}),
        listing(f"/payments/by-customer/{w.customers[0]}?start={s}&end={e}&limit=30",
                "payments_by_customer", w.customers[0], s, e, limit=30),
        listing(f"/payments/by-customer/{w.customers[1]}", "payments_by_customer",
                w.customers[1], None, None),
        listing(f"/payments/by-loan/{loan}", "payments_by_loan", loan),
        listing(f"/payments/by-status/Completed?start={s}&end={e}", "payments_by_status",
                "Completed", s, e),
        listing(f"/payments/by-method/Online?start={s}&end={e}&limit=5", "payments_by_method",
                "Online", s, e, limit=5),
        (f"/payments/{w.payment_ids[4]}", "payment_by_id", (w.payment_ids[4],), {}),
    ]  # fmt: skip


def expected(postgres: PostgresReads, method: str, args: Any, kwargs: Any) -> Any:
    result = getattr(postgres, method)(*args, **kwargs)
    if method.endswith("_by_id"):
        return as_json(result)
    return as_json({"items": result.rows, "next": result.next})


def test_every_route_answers_what_the_read_path_reads(
    api: Any,
    postgres: PostgresReads,
    reads_world: ReadsWorld,  # noqa: F811
) -> None:
    client, path, phases = api
    w = reads_world
    cases = samples(w)
    assert {method for _, method, _, _ in cases} == {r.pattern for r in routes(w.settings)}
    for url, method, args, kwargs in cases:
        response = client.get(url)
        assert response.status_code == 200, (url, response.text[:300])
        assert response.headers["X-Read-Source"] == "postgres"  # postgres-only
        assert response.headers["Content-Type"].startswith("application/json")
        assert body(response) == expected(postgres, method, args, kwargs), url
    # dynamodb-only: the same answers, now from DynamoDB.
    for table in (w.logs_table, w.payments_table):
        phases.set(table, "dynamodb-only", who="test_read_api", why="api test", force=True)
    try:
        time.sleep(w.settings.reads.cache_s + 0.2)
        for url, method, args, kwargs in cases:
            response = client.get(url)
            assert response.status_code == 200, (url, response.text[:300])
            assert response.headers["X-Read-Source"] == "dynamodb"
            assert response.content == to_json(body(response))  # canonical text
            assert body(response) == expected(postgres, method, args, kwargs), url
        # DynamoDB's reported read units are exported for `replicator cost`, per table.
        report = cost.measure(
            w.settings,
            [f"{str(client.base_url).rstrip('/')}/metrics"],
            window_s=0,
            dynamodb=dynamodb_client(w.settings.dynamodb),
        )
        by_table = {t.table: t for t in report.tables}
        for table in (w.logs_table, w.payments_table):
            assert path.metrics.read_units.labels(table)._value.get() > 0, table
            assert (by_table[table].read_units_per_s or 0) > 0, (table, report.errors)
    finally:
        for table in (w.logs_table, w.payments_table):
            phases.set(table, "postgres-only", who="test_read_api", why="api test done")
        time.sleep(w.settings.reads.cache_s + 0.2)


def test_pagination_follows_the_cursor(
    api: Any,
    postgres: PostgresReads,
    reads_world: ReadsWorld,  # noqa: F811
) -> None:
    client, _, _ = api
    customer = reads_world.customers[0]
    items, url, pages = [], f"/payments/by-customer/{customer}?limit=9", 0
    while True:
        page = body(client.get(url))
        items += page["items"]
        pages += 1
        if page["next"] is None:
            break
        url = f"/payments/by-customer/{customer}?limit=9&cursor={quote(page['next'])}"
    assert pages > 5
    everything = postgres.payments_by_customer(customer, limit=500)
    assert everything.next is None and items == as_json(everything.rows)


def test_amounts_are_exact_json_numbers(
    api: Any,
    pg: psycopg.Connection[Any],
    reads_world: ReadsWorld,  # noqa: F811
) -> None:
    client, _, _ = api
    pid, amount = pg.execute(
        "SELECT paymentid, paymentamount FROM dbo.payments WHERE paymentid = ANY(%s) "
        "AND paymentamount = 12.50 LIMIT 1",
        [reads_world.payment_ids],
    ).fetchone()  # 1 in 7 of our payments is 12.50
    response = client.get(f"/payments/{pid}")
    assert response.status_code == 200
    # A number with its exact digits and its column's scale (numeric(10,2)), from either store.
    assert b'"PaymentAmount":12.50,' in response.content
    assert body(response)["PaymentAmount"] == amount


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/logs/by-application/abc", "application_id: expected an integer"),
        ("/logs/by-application/99999999999", "out of range"),
        ("/logs/by-application/5?limit=0", "limit: 0 is out of range"),
        ("/logs/by-application/5?limit=100000", "limit: 100000 is out of range"),
        ("/logs/by-application/5?limit=ten", "limit: expected an integer"),
        ("/logs/by-application/5?colour=red", "unknown parameter 'colour'"),
        ("/logs/by-application/5?limit=1&limit=2", "more than once"),
        ("/logs/by-application/5?cursor=bogus", "cursor"),
        ("/logs/by-service/Svc?start=2024-01-01", "'end' is required"),
        ("/logs/by-service/Svc?start=yesterday&end=2024-01-02", "start: 'yesterday' is not"),
        ("/logs/by-service/Svc?start=2024-01-02&end=2024-01-01", "start must be before end"),
        ("/logs/by-service/Svc?start=2000-01-01&end=2024-01-01", "at most 366"),
        ("/logs/failures/2024-13-01", "day: '2024-13-01' is not a date"),
        ("/logs/12?limit=5", "unknown parameter 'limit'"),
        ("/payments/by-status/Lost?start=2024-01-01&end=2024-02-01", "not one of Pending"),
        ("/payments/by-method/ACH?start=2024-02-01&end=2024-01-01", "start must not be after"),
        ("/payments/by-customer/7?start=2024-02-30", "start: '2024-02-30' is not a date"),
    ],
)
def test_bad_parameters_answer_400(api: Any, url: str, message: str) -> None:
    client, _, _ = api
    response = client.get(url)
    assert response.status_code == 400, response.text
    assert body(response)["error"] == "bad_request"
    assert message in body(response)["message"]


def test_a_cursor_of_another_query_is_refused(
    api: Any,
    reads_world: ReadsWorld,  # noqa: F811
) -> None:
    client, _, _ = api
    first = body(client.get(f"/payments/by-customer/{reads_world.customers[0]}?limit=3"))
    other = client.get(f"/payments/by-customer/{reads_world.customers[1]}?cursor={first['next']}")
    assert other.status_code == 400 and "cursor" in body(other)["message"]


def test_unknown_paths_and_items_404_and_writes_405(api: Any) -> None:
    client, _, _ = api
    for url in ("/nothing", "/logs", "/payments/by-customer/1/x", "/logs/by-service/a/b"):
        response = client.get(url)
        assert response.status_code == 404 and body(response)["error"] == "not_found", url
    missing = client.get(f"/logs/{2**62}")
    assert missing.status_code == 404 and "no log with id" in body(missing)["message"]
    assert client.get(f"/payments/{2**31 - 1}").status_code == 404
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = client.request(method, "/payments/1", content=b"{}")
        assert response.status_code == 405 and response.headers["Allow"] == "GET"


def test_a_store_that_does_not_answer_is_503(reads_world: ReadsWorld) -> None:  # noqa: F811
    w = reads_world
    phases = PhaseStore(w.settings)
    phases.set(w.payments_table, "dynamodb-only", who="test_read_api", why="503", force=True)
    path = ReadPath(with_dead_dynamodb(w.settings), phases)
    server = ReadApi(path, port=0).start()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/payments/by-loan/1", timeout=30)
        assert response.status_code == 503
        assert body(response)["error"] == "unavailable" and "dynamodb" in body(response)["message"]
    finally:
        server.close()
        path.close()
        phases.set(w.payments_table, "postgres-only", who="test_read_api", why="503 done")
        phases.close()


def test_openapi_describes_every_route_and_the_answers_validate(
    api: Any,
    reads_world: ReadsWorld,  # noqa: F811
) -> None:
    client, _, _ = api
    spec = body(client.get("/openapi.json"))
    assert spec["openapi"].startswith("3.1")
    table = routes(reads_world.settings)
    assert set(spec["paths"]) == {r.path for r in table} | {"/phases"}
    registry = Registry().with_resource(
        "urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012)
    )

    def validator(route_path: str) -> Draft202012Validator:
        pointer = route_path.replace("~", "~0").replace("/", "~1")
        answer = "get/responses/200/content/application~1json/schema"
        return Draft202012Validator(
            {"$ref": f"urn:spec#/paths/{pointer}/{answer}"}, registry=registry
        )

    for url, method, _, _ in samples(reads_world):
        route = next(r for r in table if r.pattern == method)
        answer = json.loads(client.get(url).content)
        validator(route.path).validate(answer)
        for p in spec["paths"][route.path]["get"]["parameters"]:
            assert p["in"] in ("path", "query") and "schema" in p
    validator("/phases").validate(body(client.get("/phases")))
    # A row with a property the schema does not know would fail: the schema is not vacuous.
    row = json.loads(client.get(f"/payments/{reads_world.payment_ids[0]}").content)
    validator("/payments/{payment_id}").validate(row)
    with pytest.raises(Exception, match="Additional properties"):
        validator("/payments/{payment_id}").validate({**row, "Surprise": 2})
    with pytest.raises(Exception, match="is not of type 'integer'"):
        validator("/payments/{payment_id}").validate({**row, "PaymentId": "1"})


def test_phases_are_served(api: Any, reads_world: ReadsWorld) -> None:  # noqa: F811
    client, _, _ = api
    tables = body(client.get("/phases"))["tables"]
    assert tables[reads_world.logs_table] == "postgres-only"
    assert tables[reads_world.payments_table] == "postgres-only"
    assert client.get("/healthz").status_code == 200
    assert b"replicator_reads_total" in client.get("/metrics").content


def test_binds_localhost_unless_configured(api: Any) -> None:
    _, path, _ = api
    server = ReadApi(path, port=0)
    try:
        assert server.address[0] == "127.0.0.1"
    finally:
        server.close()


def test_cli_read_prints_rows_and_refuses_bad_input(reads_world: ReadsWorld) -> None:  # noqa: F811
    w = reads_world
    config = str(w.consumer.config)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return helpers.cli(config, *args, timeout=60)

    done = cli(
        "read", "payments-by-loan", str(w.loans[w.customers[1]][0]), "--json", "--limit", "4"
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout, parse_float=Decimal)
    assert answer["source"] == "postgres" and len(answer["items"]) == 4 and answer["next"]
    table = cli("read", "log", str(w.big_log_id), "--store", "dynamodb")
    assert table.returncode == 0 and str(w.big_log_id) in table.stdout, table.stderr
    for bad, message in (
        (("read", "payments-by-status", "Completed"), "needs --start and --end"),
        (("read", "log", "x"), "log_id: expected an integer"),
        (("read", "logs-by-colour", "1"), "unknown pattern"),
        (("read", "payment", "1", "--store", "mysql"), "--store must be"),
    ):
        failed = cli(*bad)
        assert failed.returncode == 1 and message in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
