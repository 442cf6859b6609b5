from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from replicator.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_replicator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("REPLICATOR_"):
            monkeypatch.delenv(name)


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback instead of an error message: {result.exception!r}"
    )
    return result.exit_code, result.output


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    code, output = run("--config", str(tmp_path / "nope.yaml"), "config", "show")
    assert code == 1 and "cannot read config file" in output and "Traceback" not in output


def test_config_file_that_is_not_yaml_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("kafka: [unclosed\n")
    code, output = run("--config", str(config), "config", "show")
    assert code == 1 and "is not valid YAML" in output


def test_invalid_mapping_is_refused_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "tables:\n"
        "  - name: T\n    source: dbo.t\n    primary_key: [id]\n"
        "    partition_key: {attribute: PK, template: '{nosuch}'}\n"
        "    columns: [{name: id, attribute: Id, type: int}]\n"
    )
    code, output = run("--config", str(config), "config", "show")
    assert code == 1 and "tables.0" in output and "unknown column 'nosuch'" in output


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("kafka:\n  bootstrap: x\n")
    code, output = run("--config", str(config), "config", "show")
    assert code == 1 and "kafka.bootstrap" in output


def test_config_show_masks_secrets() -> None:
    code, output = run("config", "show")
    assert code == 0 and '"password": "**********"' in output


def test_dlq_replay_without_a_selection_is_refused() -> None:
    code, output = run("dlq", "replay")
    assert code == 1 and "--all" in output


def test_unreachable_connect_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATOR_CONNECTOR__URL", "http://127.0.0.1:9")
    code, output = run("connector", "status")
    assert code == 1 and "did not answer" in output


# kafka.extra is merged last into every consumer's config: what would break the commit protocol.
BREAKS_THE_COMMIT_PROTOCOL = [
    ({"enable.auto.commit": "true"}, "enable.auto.commit"),
    ({"enable.auto.commit": "1"}, "enable.auto.commit"),  # librdkafka reads 1 and t as true
    ({"auto.commit.enable": "true"}, "auto.commit.enable"),
    ({"enable.auto.offset.store": "True"}, "enable.auto.offset.store"),
    ({"isolation.level": "read_uncommitted"}, "isolation.level"),
    ({"group.id": "other"}, "group.id"),
    ({"auto.offset.reset": "latest"}, "auto.offset.reset"),  # kafka.new_group_starts_at
    ({"enable.partition.eof": "false"}, "enable.partition.eof"),
]


@pytest.mark.parametrize(("extra", "key"), BREAKS_THE_COMMIT_PROTOCOL)
@pytest.mark.parametrize("command", [["config", "show"], ["run"], ["backfill"]])
def test_kafka_extra_that_breaks_the_commit_protocol_is_refused_at_start(
    tmp_path: Path, extra: dict[str, str], key: str, command: list[str]
) -> None:
    config = tmp_path / "replicator.yaml"
    nowhere = "127.0.0.1:9"  # were the settings accepted, no real broker or table is touched
    kafka = {"bootstrap_servers": nowhere, "extra": {"client.rack": "a", **extra}}
    data = {
        "kafka": kafka,
        "dynamodb": {"endpoint_url": f"http://{nowhere}"},
        "metrics": {"enabled": False},
    }
    config.write_text(yaml.safe_dump(data))
    code, output = run("--config", str(config), *command)
    assert code == 1 and "kafka.extra" in output and key in output
    assert "Traceback" not in output


def test_kafka_extra_that_keeps_the_commit_protocol_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "replicator.yaml"
    harmless = {
        "enable.auto.commit": "false",
        "enable.auto.offset.store": "false",
        "isolation.level": "read_committed",
        "security.protocol": "SASL_SSL",
        "session.timeout.ms": "6000",
    }
    config.write_text(yaml.safe_dump({"kafka": {"extra": harmless}}))
    code, output = run("--config", str(config), "config", "show")
    assert code == 0 and '"security.protocol": "SASL_SSL"' in output
