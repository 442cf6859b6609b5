from __future__ import annotations

from pathlib import Path

import pytest
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
