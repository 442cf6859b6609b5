"""deploy/grafana and deploy/prometheus without services: the dashboard is well-formed Grafana
JSON whose every query is valid PromQL, the alert rules pass `promtool check rules`, and their
behaviour passes `promtool test rules` (Debian's prometheus package, installed by ./dev).
That every metric they name is really exported is checked against a live consumer in
tests/integration/test_dashboard_metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "replicator.json"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "replicator.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "replicator_test.yml"
METRIC = re.compile(r"\b(replicator_[a-z0-9_]+)\b")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: ./dev setup installs Debian's prometheus package"
    return path


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p["targets"]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def referenced_metrics() -> set[str]:
    """Every replicator_* metric (sample) name the dashboard, its variables and the rules use."""
    dash = dashboard()
    texts = dashboard_exprs() + rule_exprs()
    texts += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return {name for text in texts for name in METRIC.findall(text)}


def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] == "replicator" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"panel {p['title']!r} overlaps another"
        taken |= cells
    for p in panels(dash):
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for target in p["targets"]:
            assert target["expr"].strip() and target["refId"], p["title"]
    # The provisioned data source (deploy/grafana/provisioning) is the variable's default.
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (variable,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == provisioned["datasources"][0]["uid"]


def test_dashboard_covers_what_operators_watch() -> None:
    used = referenced_metrics()
    for name in (
        "replicator_consumer_lag",
        "replicator_slot_retained_wal_bytes",
        "replicator_slot_active",
        "replicator_connector_state",
        "replicator_connector_tasks",
        "replicator_events_consumed_total",
        "replicator_events_applied_total",
        "replicator_events_dead_lettered_total",
        "replicator_end_to_end_seconds_bucket",
        "replicator_write_seconds_bucket",
        "replicator_dynamodb_consumed_write_units_total",
        "replicator_dynamodb_throttled_requests_total",
    ):
        assert name in used, name


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Grafana's variables replaced by values, each query becomes a recording rule, and
    promtool parses them all."""
    rules = []
    for n, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$table", ".*")
        rules.append({"record": f"dashboard:query_{n}", "expr": concrete})
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_are_valid_and_cover_the_required_alerts() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = "\n".join(rule_exprs())
    for name in (
        "replicator_consumer_lag",  # consumer lag
        "replicator_slot_retained_wal_bytes",  # slot WAL size
        'replicator_connector_state{state=~"FAILED|MISSING"}',  # connector failed
        'replicator_connector_tasks{state="FAILED"}',  # task failed
        "replicator_events_dead_lettered_total",  # dead-letter growth
        "replicator_end_to_end_seconds_bucket",  # end-to-end latency
    ):
        assert name in text, name


def test_alert_rules_fire_when_they_should_and_only_then() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_prometheus_config_loads_the_rules_as_compose_mounts_them(tmp_path: Path) -> None:
    """prometheus.yml with its rule_files glob pointed at the repository's rules/ (Compose
    mounts that folder at /etc/prometheus/rules): promtool checks the config and every rule
    file it finds there."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(RULES.parent / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [promtool(), "check", "config", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in done.stdout + done.stderr
