"""The one frozen settings tree, loaded once at the edge (YAML file + REPLICATOR_* environment).

Environment variables override the file: REPLICATOR_KAFKA__BOOTSTRAP_SERVERS=host:9092, and so
on, with ``__`` between levels. Nothing else in the package reads the environment.

Why one module of this size: it is one tree, and a reader looks up any setting, its default
and its check in one place; the cross-checks between sections (the retry bounds against the
liveness window, the tables among themselves) read several sections at once.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from replicator.core.mapping import TableMapping
from replicator.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PostgresSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 15432
    database: str = "loans"
    user: str = Field(
        "postgres",
        description="owner of the schema; used by the local stack, enrichment lookups and tests",
    )
    password: SecretStr = SecretStr("postgres")
    replication_user: str = "debezium"
    replication_password: SecretStr = SecretStr("debezium")
    schema_name: str = "dbo"
    lookup_dsn: SecretStr | None = Field(
        None,
        description="where enrichment lookups read (a read replica, say); unset: the "
        "connection above",
    )

    def lookups(self) -> str:
        return self.lookup_dsn.get_secret_value() if self.lookup_dsn else self.dsn()

    def dsn(self, *, replication_role: bool = False) -> str:
        user = self.replication_user if replication_role else self.user
        secret = self.replication_password if replication_role else self.password
        return (
            f"host={self.host} port={self.port} dbname={self.database} user={user} "
            f"password={secret.get_secret_value()} connect_timeout=5"
        )


# librdkafka reads a boolean's "false" as any of these (case-insensitive).
_FALSE = frozenset({"false", "f", "0"})
# What kafka.extra, merged last into every consumer's config (source.py), may not change: the
# values that keep the commit protocol intact (None: none, the replicator sets it) and why.
_REFUSED_EXTRA: dict[str, tuple[frozenset[str] | None, str]] = {
    "enable.auto.commit": (
        _FALSE,
        "the replicator commits offsets itself once DynamoDB has acknowledged the batch; "
        "auto-commit would commit records not yet written",
    ),
    "auto.commit.enable": (_FALSE, "the legacy spelling of enable.auto.commit"),
    "enable.auto.offset.store": (
        _FALSE,
        "the offset store is what an automatic or argument-less commit writes: it must only "
        "ever hold offsets of written records, so the replicator keeps it off and commits "
        "explicit offsets",
    ),
    "isolation.level": (
        frozenset({"read_committed"}),
        "read_uncommitted would apply records of aborted Kafka transactions (a connector with "
        "exactly-once delivery)",
    ),
    "auto.offset.reset": (
        None,
        "set kafka.new_group_starts_at instead: a group that starts at the topics' end skips "
        "every change not yet applied, so that choice is a setting of its own, logged at start",
    ),
    "group.id": (
        None,
        "set kafka.group_id instead: a backfill consumes under its own group "
        "(backfill.group_prefix), and this would make it commit into another group",
    ),
    "enable.partition.eof": (
        None,
        "the replicator sets it per consumer: a backfill needs it to see where a partition ends",
    ),
}


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    group_id: str = "replicator"
    dead_letter_topic: str = "replicator.dead-letter"
    dead_letter_retention_ms: int = Field(
        30 * 86_400_000,
        gt=0,
        description="retention.ms of the dead-letter topic when the replicator creates it (30 "
        "days: it is evidence); every table's tombstone_days must cover the topic's real "
        "retention, or the consumer refuses to start",
    )
    batch_size: int = Field(500, gt=0, description="records taken per poll")
    poll_timeout_s: float = Field(0.5, gt=0)
    rejoin_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a consumer that has been out of its group this long (its assignment lost "
        "and no new one) is closed and made again: a JoinGroup lost while the group's "
        "coordinator moved is otherwise waited for max.poll.interval.ms (5 minutes)",
    )
    new_group_starts_at: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a consumer group with no committed offset (or one retention "
        "removed) starts: earliest applies every change the topics hold; latest skips them, "
        "only for a group whose tables something else fills (a backfill, verify --repair)",
    )
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="librdkafka settings (TLS, SASL, timeouts), merged into every Kafka client's; "
        "those that would break the commit protocol are refused",
    )

    @field_validator("extra")
    @classmethod
    def _keeps_the_commit_protocol(cls, extra: dict[str, str]) -> dict[str, str]:
        problems = []
        for key, value in extra.items():
            refused = _REFUSED_EXTRA.get(key.strip())
            if refused is None:
                continue
            allowed, why = refused
            if allowed is None:
                problems.append(f"{key} cannot be set here: {why}")
            elif value.strip().lower() not in allowed:
                problems.append(f"{key}={value!r} is refused: {why}")
        if problems:
            raise ValueError("; ".join(problems))
        return extra


class ConnectorSettings(_Section):
    """Values filled into connectors/*.json."""

    url: str = "http://127.0.0.1:18083"
    name: str = "loans-postgres"
    topic_prefix: str = "loans"
    slot_name: str = "replicator"
    publication_name: str = "replicator_pub"
    heartbeat_interval_ms: int = 10_000
    topic_partitions: int = Field(3, gt=0)
    replication_factor: int = Field(1, gt=0)
    max_compaction_lag_ms: int = Field(
        7 * 86_400_000,
        gt=0,
        description="max.compaction.lag.ms of the source topics Connect creates: a deleted "
        "row's older events are compacted away within it (Kafka's default is never), which "
        "with delete_retention_ms bounds what a replay of the topic can bring back; 7 days, "
        "Kafka's default segment.ms",
    )
    delete_retention_ms: int = Field(
        86_400_000,
        gt=0,
        description="delete.retention.ms of the source topics Connect creates: how long a "
        "compacted-away row's Kafka tombstone stays (1 day, Kafka's default)",
    )
    template: Path = Path("connectors/postgres-source.json")
    password_ref: str | None = Field(
        None,
        description="what the connector config gets as database.password, e.g. "
        "'${file:/etc/kafka/secrets/pg.properties:password}'; unset = the local stack's file",
    )


class DynamoSettings(_Section):
    endpoint_url: str | None = Field(
        "http://127.0.0.1:18000", description="unset or empty: AWS's regional endpoint"
    )
    region: str = "us-east-1"
    access_key_id: str | None = "local"
    secret_access_key: SecretStr | None = SecretStr("local")
    # The one retry policy of every write and lookup (replicator.stream.retry).
    max_attempts: int = Field(
        10,
        gt=0,
        description="attempts per request (the first included) on throttling, 5xx and "
        "connection errors; per key move on transaction conflicts; per enrichment lookup",
    )
    backoff_base_s: float = Field(
        0.05, gt=0, description="full-jitter exponential backoff: the first retry waits up to this"
    )
    backoff_cap_s: float = Field(
        5.0,
        gt=0,
        description="no wait between attempts is longer; a batch that DynamoDB refuses for a "
        "systemic reason (a missing table, say) is retried at this interval",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="per attempt: to connect")
    read_timeout_s: float = Field(
        30.0, gt=0, description="per attempt: longest wait for the bytes of the answer"
    )
    request_deadline_s: float = Field(
        60.0,
        gt=0,
        description="no retry of one request starts later than this after its first attempt "
        "(so one request takes at most this plus one attempt's timeouts)",
    )
    concurrency: int = Field(16, ge=1, le=256, description="write requests in flight")
    client: Literal["wire", "boto3"] = Field(
        "wire",
        description="the sink's writes: 'wire' sends the prepared requests as DynamoDB JSON "
        "(signed by botocore, far less CPU per write); 'boto3' uses boto3's client",
    )
    guarded_lane: Literal["single", "transact"] = Field(
        "single",
        description="how the guarded lane sends rows that did not move: 'single', one "
        "conditional PutItem each (1x write units); 'transact', up to 100 independent rows to a "
        "TransactWriteItems, each still guarded (a quarter of the client CPU or less, 2x write "
        "units)",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _empty_is_aws(cls, value: str | None) -> str | None:
        return value or None


class MetricsSettings(_Section):
    """The consumer's HTTP endpoint: /metrics (Prometheus), /healthz and /readyz."""

    enabled: bool = True
    host: str = Field(
        "127.0.0.1", description="address to bind; 0.0.0.0 in a container, so probes reach it"
    )
    port: int = Field(9108, ge=0, le=65535, description="0: any free port (tests)")
    live_within_s: float = Field(
        300.0,
        gt=0,
        description="/healthz fails when the loop has not turned for this long (a batch write "
        "that retries a slow DynamoDB can hold it for minutes; the default is Kafka's "
        "max.poll.interval.ms, past which the group evicts the member anyway)",
    )
    lag_interval_s: float = Field(
        5.0, gt=0, description="consumer lag per partition is refreshed at most this often"
    )
    source_interval_s: float = Field(
        15.0,
        ge=0,
        description="how often the consumer reads the replication slot (PostgreSQL) and the "
        "connector's state (Kafka Connect) into its metrics, off the hot loop; 0: never",
    )
    connector_state: bool = Field(
        True,
        description="export the connector's state read from Kafka Connect's REST API "
        "(connector.url); off where that API is closed to the consumers (Strimzi's network "
        "policy, say): its alerts then stay silent, watch the KafkaConnector's status instead",
    )
    history_interval_s: float = Field(
        2.0, gt=0, description="the status page's charts take a sample this often"
    )
    history_s: float = Field(
        600.0, gt=0, description="the status page's charts span this much recent time"
    )
    consumer_urls: list[str] = Field(
        default_factory=list,
        description="/metrics URLs of running consumers, read by `replicator lag`, `status` "
        "and `cost` (every replica, summed); empty: this host's metrics.port",
    )

    def urls(self) -> list[str]:
        if self.consumer_urls:
            return list(self.consumer_urls)
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return [f"http://{host}:{self.port}/metrics"]


class CostSettings(_Section):
    """On-demand prices for `replicator cost`, in USD. Defaults: AWS's DynamoDB pricing page for
    us-east-1, Standard table class, as of 2025 (on-demand throughput was halved on 2024-11-01:
    it had been $1.25 per million write and $0.25 per million read request units)."""

    write_per_million: float = Field(0.625, ge=0, description="USD per million write units")
    read_per_million: float = Field(0.125, ge=0, description="USD per million read units")
    storage_per_gb_month: float = Field(
        0.25, ge=0, description="USD per GB-month stored (first 25 GB per account are free)"
    )
    # PostgreSQL's side, for `replicator report`'s comparison: set your instance's and region's.
    postgres_instance_per_month: float = Field(
        190.0,
        ge=0,
        description="USD per month of the PostgreSQL instance (default: 0.26 USD/h x 730 h, "
        "an on-demand Aurora PostgreSQL db.r6g.large in us-east-1; set yours)",
    )
    postgres_instance_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the part of the instance a table costs; unset: its share of the "
        "database's size (pg_total_relation_size / pg_database_size)",
    )
    postgres_storage_per_gb_month: float = Field(
        0.10, ge=0, description="USD per GB-month of PostgreSQL storage (Aurora standard)"
    )
    postgres_io_per_million: float = Field(
        0.20, ge=0, description="USD per million PostgreSQL I/O requests (Aurora standard)"
    )


class ReadsSettings(_Section):
    """The read path (library and HTTP API): routing by phase, shadow reads, page sizes."""

    cache_s: float = Field(
        2.0, ge=0, description="a table's phase is cached this long: a change applies within it"
    )
    shadow: bool = Field(
        False,
        description="also read the other store in the background, serve the phase's store and "
        "record mismatches",
    )
    shadow_recheck_s: float = Field(
        2.0, ge=0, description="a mismatch is read again after this long (replication lag)"
    )
    incident_flush_s: float = Field(
        10.0, gt=0, description="fallbacks and mismatches are written to the phase store this often"
    )
    host: str = Field("127.0.0.1", description="HTTP read API: address to bind")
    port: int = Field(9110, ge=0, le=65535, description="HTTP read API port; 0: any free port")
    request_timeout_s: float = Field(
        30.0, gt=0, description="HTTP read API: an answer not ready by then is a 503"
    )
    keep_alive_s: float = Field(
        60.0, ge=1, description="HTTP read API: an idle kept-alive connection is closed after this"
    )
    shutdown_timeout_s: float = Field(
        10.0, ge=0, description="HTTP read API: on shutdown, requests in flight get this long"
    )
    default_page_size: int = Field(50, gt=0)
    max_page_size: int = Field(500, gt=0)
    max_range_days: int = Field(
        366, gt=0, description="longest time range of a by-service query (one query per day)"
    )
    postgres_dsn: SecretStr | None = Field(
        None, description="libpq DSN PostgreSQL reads use; unset: the postgres section's"
    )
    postgres_pool_size: int = Field(8, gt=0, description="PostgreSQL connections kept for reads")
    dynamodb_attempts: int = Field(
        2, gt=0, description="attempts per DynamoDB read (a fallback should not wait long)"
    )
    dynamodb_timeout_s: float = Field(3.0, gt=0, description="connect and read timeout")

    @model_validator(mode="after")
    def _pages(self) -> ReadsSettings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size is larger than max_page_size")
        return self


class ControlSettings(_Section):
    """Where the replicator keeps its own state (phases and their audit, verify results):
    a schema in PostgreSQL, so applications in any language can read the phases with SQL."""

    dsn: str = Field(
        "", description="libpq DSN of the control database; empty: the source database"
    )
    schema_name: str = Field(
        "replicator", pattern=r"^[a-z_][a-z0-9_]*$", description="schema of the control tables"
    )


class PhaseSettings(_Section):
    """Gates of `replicator phase set`: what moving a table's reads forward requires."""

    max_lag_s: float = Field(
        30.0,
        ge=0,
        description="hybrid-read and later: the consumer group's oldest uncommitted record of "
        "the table may be at most this old",
    )
    verify_within_h: float = Field(
        24.0, gt=0, description="hybrid-read and later: a clean full verify at most this old"
    )
    incident_window_h: float = Field(
        24.0,
        ge=0,
        description="dynamodb-only: zero fallbacks and zero shadow mismatches over this window, "
        "which the table must also have spent in hybrid-read",
    )
    lag_timeout_s: float = Field(10.0, gt=0, description="how long the lag gate waits for Kafka")


class PurgeSettings(_Section):
    """`replicator purge` (Phase 5): old rows deleted from PostgreSQL without reaching DynamoDB."""

    origin: str = Field(
        "replicator_purge",
        min_length=1,
        max_length=63,
        description="the PostgreSQL replication origin the purge session is tagged with; "
        "consumers drop every change of a transaction carrying it",
    )
    batch_rows: int = Field(1000, gt=0, description="rows deleted per transaction")
    rate_rows_s: float = Field(
        2000.0, gt=0, description="at most this many rows deleted per second (the source's load)"
    )
    lock_timeout_s: float = Field(
        5.0, gt=0, description="a batch waits this long for row locks, then is retried"
    )


class BackfillSettings(_Section):
    """`replicator backfill` (topic replay) and `replicator snapshot` (incremental snapshot)."""

    group_prefix: str = Field(
        "replicator-backfill",
        description="a backfill's consumer group is {group_prefix}.{table}.{target}: the same "
        "command run again resumes from its committed offsets",
    )
    live_lag_events: int = Field(
        2000,
        ge=0,
        description="a backfill into a table the live group also writes pauses while that "
        "group is more than this many records behind on the table",
    )
    live_lag_s: float = Field(
        30.0, ge=0, description="... or while its oldest unapplied record is older than this"
    )
    live_check_s: float = Field(
        5.0, gt=0, description="how often the live group's lag is read during a backfill"
    )
    progress_log_s: float = Field(
        10.0, gt=0, description="a progress line is logged this often (for non-interactive runs)"
    )
    signal_table: str = Field(
        "dbo.debezium_signal",
        pattern=r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$",
        description="the connector's signal.data.collection (schema.table)",
    )


class VerifySettings(_Section):
    """`replicator verify` and `replicator validate`."""

    scan_segments: int = Field(4, ge=1, le=64, description="parallel segments of the DynamoDB scan")
    fetch_rows: int = Field(2000, gt=0, description="PostgreSQL rows per server-side cursor fetch")
    bucket_rows: int = Field(
        50_000,
        gt=0,
        description="(key, digest) entries per on-disk bucket: the most held in memory at once",
    )
    max_buckets: int = Field(256, ge=1, le=1024, description="bucket files per side at most")
    spill_dir: Path | None = Field(None, description="where the buckets go; unset: system temp")
    debezium_margin_s: float = Field(
        2.0, ge=0, description="before the re-check: time for a commit to reach Kafka"
    )
    max_recheck_wait_s: float = Field(
        120.0, ge=0, description="longest wait for the consumer group to apply what is in Kafka"
    )
    recheck_rounds: int = Field(2, ge=0, le=5, description="re-checks of divergent keys")
    sample_threshold: float = Field(
        0.95, ge=0, le=1, description="validate: least share of sampled rows that must match"
    )
    sample_rows: int = Field(100, gt=0, description="validate: rows sampled per table")
    latency_reads: int = Field(20, gt=0, description="validate: reads per access pattern")
    coordinated_timeout_s: float = Field(
        60.0, gt=0, description="validate: a test row must reach DynamoDB within this long"
    )


class StackSettings(_Section):
    """The local development/test stack (plain processes, no Docker).

    The default ports lie below Linux's ephemeral range (32768-60999), so that no client
    socket the kernel hands out can hold one of them when the stack starts."""

    home: Path = Path(".stack")
    kafka_port: int = 19092
    controller_port: int = 19093
    connect_port: int = 18083
    dynamodb_port: int = 18000
    cache_dir: Path = Field(
        Path("~/.cache/replicator"),
        description="built tools shared by every checkout (the DynamoDB endpoint's binary)",
    )
    dynoxide_version: str = Field(
        "3.2.0", description="the local DynamoDB endpoint, built once from crates.io by cargo"
    )
    kafka_heap: str = "768m"
    connect_heap: str = "768m"
    start_timeout_s: float = 180.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPLICATOR_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    postgres: PostgresSettings = PostgresSettings()
    kafka: KafkaSettings = KafkaSettings()
    connector: ConnectorSettings = ConnectorSettings()
    dynamodb: DynamoSettings = DynamoSettings()
    metrics: MetricsSettings = MetricsSettings()
    control: ControlSettings = ControlSettings()
    reads: ReadsSettings = ReadsSettings()
    cost: CostSettings = CostSettings()
    phases: PhaseSettings = PhaseSettings()
    purge: PurgeSettings = PurgeSettings()
    backfill: BackfillSettings = BackfillSettings()
    verify: VerifySettings = VerifySettings()
    stack: StackSettings = StackSettings()
    tables: list[TableMapping] = Field(default_factory=lambda: default_tables())
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file (passed as init values).
        return env_settings, init_settings

    @model_validator(mode="after")
    def _retries_stay_live(self) -> Settings:
        # Liveness is told between attempts: one attempt or one wait must fit in its window.
        dynamo = self.dynamodb
        longest = max(dynamo.connect_timeout_s + dynamo.read_timeout_s, dynamo.backoff_cap_s)
        if longest >= self.metrics.live_within_s:
            raise ValueError(
                f"dynamodb: one attempt or wait can take {longest:g} s (connect_timeout_s + "
                f"read_timeout_s, or backoff_cap_s), not less than metrics.live_within_s "
                f"({self.metrics.live_within_s:g} s): /healthz would fail while it retries"
            )
        return self

    @model_validator(mode="after")
    def _unique_tables(self) -> Settings:
        for attr in ("name", "source"):
            values = [getattr(t, attr) for t in self.tables]
            dupes = {v for v in values if values.count(v) > 1}
            if dupes:
                raise ValueError(f"tables: {attr} used twice: {sorted(dupes)}")
        return self

    def topic_of(self, mapping: TableMapping) -> str:
        return f"{self.connector.topic_prefix}.{mapping.source}"

    def control_dsn(self) -> str:
        return self.control.dsn or self.postgres.dsn()

    def mapping_named(self, name: str) -> TableMapping:
        """The mapping of a DynamoDB table name (or source table), as the CLI's --table takes."""
        for mapping in self.tables:
            if name in (mapping.name, mapping.source):
                return mapping
        known = ", ".join(t.name for t in self.tables) or "none"
        raise ConfigError(f"no mapped table is named {name!r} (mapped: {known})")

    def mapping_for_source(self) -> dict[str, TableMapping]:
        return {t.source: t for t in self.tables}


def default_tables() -> list[TableMapping]:
    text = resources.files("replicator").joinpath("default_tables.yaml").read_text()
    return [TableMapping.model_validate(t) for t in yaml.safe_load(text)]


def load_settings(path: Path | None) -> Settings:
    """Read the YAML file (if any) and the environment; raise ConfigError naming bad fields."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid settings{where}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with secrets masked, for `config show`."""
    return settings.model_dump(mode="json")
