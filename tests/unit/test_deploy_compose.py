"""docker-compose.yml and deploy/Dockerfile, validated without a Docker engine: the Compose file
against the Compose Specification's JSON schema (as check-jsonschema ships it), after Compose's
own variable interpolation; every file it mounts exists and is one of the local stack's own;
the services it wires agree with the settings the replicator loads from its environment."""

from __future__ import annotations

import json
import os
import re
import tomllib
import xml.etree.ElementTree as ET
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import FormatChecker
from jsonschema.validators import validator_for

from replicator.config import Settings, load_settings
from replicator.ops.connector import render
from replicator.stack.local import PG_BIN

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "base" / "deployment.yaml"
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR and $$ (a $).
    Every variable must have a default, so that `docker compose up` needs no .env file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def fill(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        expression = match.group("braced") or match.group("plain")
        for separator in (":-", "-"):
            if separator in expression:
                name, default = expression.split(separator, 1)
                if separator == ":-":
                    return env.get(name) or default
                return env.get(name, default)
        assert expression in env, f"${{{expression}}} has no default"
        return env[expression]

    return _VARIABLE.sub(fill, value)


def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {})


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = validator_for(schema)(schema, format_checker=FormatChecker())
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of a service's bind mounts, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            if parts[0].startswith((".", "/")):
                mounts.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2]))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
    return mounts


def replicator_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in document["services"].items()
        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
    }


def settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("REPLICATOR_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    return load_settings(None)


def pom_property(name: str) -> str:
    pom = ET.parse(ROOT / "replicator" / "stack" / "pom.xml").getroot()
    found = pom.find(f"{{http://maven.apache.org/POM/4.0.0}}properties/{{*}}{name}")
    assert found is not None and found.text
    return found.text


def host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port


# --- the Compose file -------------------------------------------------------------------------


def test_the_compose_file_follows_the_compose_specification() -> None:
    assert compose_errors(compose()) == []


def test_the_specification_check_refuses_a_broken_file() -> None:
    # Guards against a validation that passes everything.
    broken = compose()
    broken["services"]["replicator"]["depends_on"] = {"connector": {"condition": "whenever"}}
    broken["services"]["kafka"]["helthcheck"] = {}
    assert len(compose_errors(broken)) >= 2


def test_every_mounted_file_exists_and_the_sql_and_connector_are_the_local_stacks() -> None:
    document = compose()
    sources = set()
    for name, service in document["services"].items():
        for source, _target, read_only in bind_mounts(service):
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name} mounts {source}, which does not exist"
            assert read_only, f"{name} mounts {source} writable"
            sources.add(path.relative_to(ROOT).as_posix())
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    # One source of truth: the local stack's own files, not copies.
    assert "replicator/stack/sql/source_schema.sql" in sources
    assert "connectors/postgres-source.json" in sources
    init = [
        target
        for source, target, _ in bind_mounts(document["services"]["postgres"])
        if source.endswith(".sql")
    ]
    assert all(t.startswith("/docker-entrypoint-initdb.d/") for t in init)


def test_dependencies_name_services_that_can_satisfy_them() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for other, how in depends.items():
            assert other in services, f"{name} depends on unknown {other}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[other], f"{other} has no healthcheck"
            if how["condition"] == "service_completed_successfully":
                assert "restart" not in services[other], f"{other} restarts: it never completes"


def test_postgres_has_logical_replication() -> None:
    command = compose()["services"]["postgres"]["command"]
    settings = {command[i + 1] for i, arg in enumerate(command) if arg == "-c"}
    assert "wal_level=logical" in settings


def test_images_are_pinned_to_the_local_stacks_versions() -> None:
    services = compose()["services"]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), name
    assert services["kafka"]["image"].endswith(f":{pom_property('kafka.version')}")
    assert services["connect"]["image"].endswith(f":{pom_property('debezium.version')}")
    assert services["postgres"]["image"] == f"postgres:{PG_BIN.parent.name}"


def test_the_replicator_services_load_settings_that_point_at_the_compose_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = compose()
    services = document["services"]
    commands = set()
    for name, service in replicator_services(document).items():
        s = settings_from(service["environment"], monkeypatch)
        commands.add(" ".join(service["command"]))
        assert host_port(f"{s.postgres.host}:{s.postgres.port}") == ("postgres", 5432), name
        kafka_host, kafka_port = host_port(s.kafka.bootstrap_servers)
        assert kafka_host == "kafka"
        assert f"INTERNAL://kafka:{kafka_port}" in services["kafka"]["environment"][
            "KAFKA_ADVERTISED_LISTENERS"
        ].split(",")
        assert host_port(s.connector.url) == ("connect", 8083)
        assert s.dynamodb.endpoint_url is not None
        dynamo_host, dynamo_port = host_port(s.dynamodb.endpoint_url)
        assert dynamo_host == "dynamodb"
        assert any(p.endswith(f":{dynamo_port}") for p in services["dynamodb"]["ports"])
        assert (
            s.postgres.password.get_secret_value()
            == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        )
        # The connector template is the mounted file, where `connector apply` looks for it.
        mounts = {t: src for src, t, _ in bind_mounts(service)}
        workdir = _dockerfile_final_stage("WORKDIR")[-1]
        assert mounts[f"{workdir}/{s.connector.template}"] == "./connectors/postgres-source.json"
        # The connector's password is a reference that Connect resolves from its environment.
        payload = render(s, s.connector.password_ref or "")
        assert payload["database.hostname"] == "postgres"
        provider, variable = payload["database.password"][2:-1].split(":")
        connect = services["connect"]["environment"]
        assert connect["CONNECT_CONFIG_PROVIDERS"] == provider
        assert connect[f"CONNECT_CONFIG_PROVIDERS_{provider.upper()}_CLASS"].endswith(
            ".EnvVarConfigProvider"
        )
        assert connect[variable] == s.postgres.replication_password.get_secret_value()
    assert commands == {"postgres prepare", "tables create", "connector apply", "run"}


def test_the_replicator_gets_the_grace_period_of_the_kubernetes_deployment() -> None:
    service = compose()["services"]["replicator"]
    assert service["stop_signal"] == "SIGTERM"
    seconds = int(service["stop_grace_period"].removesuffix("s"))
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    assert seconds == deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert "9108" in service["expose"]


def test_prometheus_and_grafana_are_wired_to_their_mounted_configuration() -> None:
    services = compose()["services"]
    prometheus = {t: ROOT / s for s, t, _ in bind_mounts(services["prometheus"])}
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    for pattern in config["rule_files"]:
        folder = str(Path(pattern).parent)
        assert folder in prometheus and prometheus[folder].is_dir()
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "replicator"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["replicator"] and sd["port"] == 9108
    grafana = {t: ROOT / s for s, t, _ in bind_mounts(services["grafana"])}
    provisioning = grafana["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert host_port(source["url"]) == ("prometheus", 9090)
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "replicator.yml").read_text())[
        "providers"
    ]
    assert grafana[provider["options"]["path"]].is_dir()


# --- the Dockerfile ---------------------------------------------------------------------------


def _dockerfile_final_stage(instruction: str) -> list[str]:
    stages = re.split(r"(?m)^FROM ", DOCKERFILE.read_text())
    lines = [line.strip() for line in stages[-1].splitlines()]
    return [line.split(None, 1)[1] for line in lines if line.upper().startswith(f"{instruction} ")]


def _ignored(path: str) -> bool:
    """Whether deploy/Dockerfile.dockerignore leaves a top-level path out of the build context."""
    ignored = False
    for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        if fnmatch(path, line.lstrip("!").rstrip("/")):
            ignored = not keep
    return ignored


def test_the_dockerfile_copies_what_exists_and_runs_the_consumer_as_pid_1() -> None:
    text = DOCKERFILE.read_text()
    for source in re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", text):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert not _ignored(path.rstrip("/")), f"{path} is left out of the build context"
    assert _ignored(".stack") and _ignored(".venv")  # gigabytes of jars and data stay out
    # Exec form, so SIGTERM reaches the replicator itself and its graceful shutdown runs.
    assert json.loads(_dockerfile_final_stage("ENTRYPOINT")[-1]) == ["replicator"]
    assert json.loads(_dockerfile_final_stage("CMD")[-1]) == ["run"]
    assert _dockerfile_final_stage("USER")[-1] not in {"root", "0"}
    base = re.findall(r"(?m)^FROM python:(\d+\.\d+)", text)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = project["requires-python"].removeprefix(">=")
    assert base and all(
        tuple(map(int, b.split("."))) >= tuple(map(int, minimum.split("."))) for b in base
    )
