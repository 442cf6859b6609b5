"""Settings refused at start, with a message naming the field and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from replicator.config import load_settings
from replicator.errors import ConfigError


def config(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "replicator.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_retry_bounds_longer_than_the_liveness_window_are_refused(tmp_path: Path) -> None:
    path = config(tmp_path, {"dynamodb": {"read_timeout_s": 400}})
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "read_timeout_s" in str(caught.value) and "live_within_s" in str(caught.value)
    path = config(tmp_path, {"dynamodb": {"backoff_cap_s": 60}, "metrics": {"live_within_s": 30}})
    with pytest.raises(ConfigError, match="backoff_cap_s"):
        load_settings(path)


def test_the_default_retry_bounds_are_accepted(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, {}))
    dynamo = settings.dynamodb
    assert (dynamo.max_attempts, dynamo.backoff_base_s, dynamo.backoff_cap_s) == (10, 0.05, 5.0)
    assert (dynamo.connect_timeout_s, dynamo.read_timeout_s) == (5.0, 30.0)
    assert dynamo.request_deadline_s == 60.0
