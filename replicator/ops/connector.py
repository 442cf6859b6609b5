"""The Debezium connector through Kafka Connect's REST API: render, apply, status, restart."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from replicator.config import Settings
from replicator.errors import ConnectorError

_PLACEHOLDER = re.compile(r"\{\{([a-z_.]+)\}\}")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def template_path(settings: Settings) -> Path:
    path = settings.connector.template
    if not path.is_absolute() and not path.exists() and (_PACKAGE_ROOT / path).exists():
        path = _PACKAGE_ROOT / path  # running from elsewhere than the project folder
    return path


def payload(settings: Settings, local_secrets: Path) -> dict[str, str]:
    """The payload with the settings' password reference (connector.password_ref), or, when
    none is set, a reference into ``local_secrets`` (the local stack's secrets file)."""
    ref = settings.connector.password_ref
    if ref is None:
        ref = "${file:" + str(local_secrets) + ":replication_password}"
    return render(settings, ref)


def render(settings: Settings, password_ref: str) -> dict[str, str]:
    """The REST payload: connectors/<template> with {{section.field}} filled from settings.

    ``password_ref`` is what goes in database.password: a Connect config-provider reference, so
    the secret itself never sits in the connector config or Connect's config topic.
    """
    path = template_path(settings)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConnectorError(f"cannot read connector template {path}: {exc.strerror}") from exc
    values: dict[str, str] = {
        f"postgres.{k}": str(v) for k, v in settings.postgres.model_dump().items()
    }
    values.update({f"connector.{k}": str(v) for k, v in settings.connector.model_dump().items()})
    values["postgres.replication_password"] = password_ref
    values["tables"] = ",".join(t.source for t in settings.tables)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConnectorError(f"{path}: unknown placeholder {{{{{name}}}}}")
        return orjson.dumps(values[name]).decode()[1:-1]  # JSON-escaped string content

    try:
        payload = orjson.loads(_PLACEHOLDER.sub(fill, text))
    except orjson.JSONDecodeError as exc:
        raise ConnectorError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConnectorError(f"{path} must hold one JSON object (the connector config)")
    return {k: str(v) for k, v in payload.items()}


class ConnectClient:
    def __init__(self, settings: Settings) -> None:
        self.name = settings.connector.name
        self.http = httpx.Client(base_url=settings.connector.url, timeout=15)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ConnectorError(
                f"Kafka Connect at {self.http.base_url} did not answer: {exc}"
            ) from exc
        if response.status_code >= 400 and response.status_code != 404:
            detail = response.text[:2000]
            raise ConnectorError(
                f"Kafka Connect refused {method} {path} ({response.status_code}): {detail}"
            )
        return response

    def apply(self, config: dict[str, str]) -> None:
        """Create or update (PUT is idempotent)."""
        validation = self._call(
            "PUT",
            f"/connector-plugins/{config['connector.class']}/config/validate",
            json={**config, "name": self.name},
        ).json()
        problems = [
            f"{c['value']['name']}: {'; '.join(c['value']['errors'])}"
            for c in validation.get("configs", [])
            if (c.get("value") or {}).get("errors")
        ]
        if problems:
            raise ConnectorError("connector config invalid:\n  " + "\n  ".join(problems))
        self._call("PUT", f"/connectors/{self.name}/config", json=config)

    def status(self) -> dict[str, Any] | None:
        response = self._call("GET", f"/connectors/{self.name}/status")
        return None if response.status_code == 404 else response.json()

    def config(self) -> dict[str, str] | None:
        response = self._call("GET", f"/connectors/{self.name}/config")
        return None if response.status_code == 404 else response.json()

    def offsets(self) -> list[dict[str, Any]] | None:
        """The source offsets Connect has committed for the connector (Kafka 3.6+):
        ``[{"partition": {...}, "offset": {...}}]``."""
        response = self._call("GET", f"/connectors/{self.name}/offsets")
        return None if response.status_code == 404 else response.json().get("offsets", [])

    def restart(self) -> None:
        response = self._call(
            "POST",
            f"/connectors/{self.name}/restart",
            params={"includeTasks": "true", "onlyFailed": "false"},
        )
        if response.status_code == 404:
            raise ConnectorError(f"connector {self.name!r} does not exist; apply it first")

    def delete(self) -> None:
        self._call("DELETE", f"/connectors/{self.name}")

    def wait_running(self, timeout_s: float = 90) -> dict[str, Any]:
        """Until the connector and every task run; a FAILED task raises with its trace."""
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            status = self.status()
            if status:
                tasks = status.get("tasks", [])
                for task in tasks:
                    if task.get("state") == "FAILED":
                        trace = (task.get("trace") or "").splitlines()[:8]
                        raise ConnectorError(f"task {task.get('id')} FAILED:\n" + "\n".join(trace))
                if (
                    status["connector"]["state"] == "RUNNING"
                    and tasks
                    and all(t.get("state") == "RUNNING" for t in tasks)
                ):
                    return status
            time.sleep(0.5)
        raise ConnectorError(
            f"connector {self.name!r} not RUNNING after {timeout_s:.0f}s: {status}"
        )


def kafka_connector_resource(
    settings: Settings, config: dict[str, str], connect_cluster: str
) -> dict[str, Any]:
    """The same connector as a Strimzi KafkaConnector resource (kafka.strimzi.io/v1), for a
    KafkaConnect cluster that runs with ``strimzi.io/use-connector-resources``."""
    config = dict(config)
    connector_class = config.pop("connector.class")
    tasks = int(config.pop("tasks.max", "1"))
    return {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaConnector",
        "metadata": {
            "name": settings.connector.name,
            "labels": {"strimzi.io/cluster": connect_cluster},
        },
        "spec": {
            "class": connector_class,
            "tasksMax": tasks,
            "autoRestart": {"enabled": True},
            "config": config,
        },
    }
