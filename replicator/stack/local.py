"""Start, check and stop the local stack's processes. Everything lives under ``stack.home``:

    jars/      Kafka + Connect classpath (libs/) and the Debezium plugin (plugins/), from Maven
    kafka/     broker config and data        connect/  worker config and secrets
    postgres/  data directory (or a postgres-owned fallback when running as root)
    dynamodb/  the DynamoDB endpoint's state (one SQLite file: it survives `down` and `up`)
    logs/      every part's log              run/      pid files of what `up` started

The DynamoDB endpoint is dynoxide (crates.io, MIT/Apache-2.0), built once by cargo into
``stack.cache_dir`` and shared by every checkout of the machine.

`down` stops exactly the processes recorded in run/ (pid plus start time), nothing else.

Why one module of this size: each part (PostgreSQL, Kafka, Connect, the endpoint) is a few
methods of one process manager that shares the pid records, ports and logs; a file per part
would pass those around.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg import sql

from replicator.config import Settings
from replicator.errors import StackError
from replicator.ops.postgres import prepare
from replicator.ops.tables import ensure_table
from replicator.stream.dynamo import dynamodb_client

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEBEZIUM_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
# Connect's scheduled.rebalance.max.delay.ms for the stack's one worker (see worker.properties).
CONNECT_REBALANCE_DELAY_MS = 10_000


@dataclass(frozen=True)
class PartStatus:
    name: str
    running: bool
    detail: str


class LocalStack:
    def __init__(self, settings: Settings, say: Callable[[str], None] = lambda _: None) -> None:
        self.s = settings
        self.cfg = settings.stack
        self.home = settings.stack.home.resolve()
        self.say = say
        self.logs = self.home / "logs"
        self.run_dir = self.home / "run"
        self.libs = self.home / "jars" / "libs"
        self.plugins = self.home / "jars" / "plugins"
        self.dynamodb_state = self.home / "dynamodb" / "state.db"
        self._root = os.geteuid() == 0

    @property
    def dynoxide(self) -> Path:
        """The endpoint's binary, one folder per version (a new pin builds beside the old)."""
        cache = self.cfg.cache_dir.expanduser()
        return cache / f"dynoxide-{self.cfg.dynoxide_version}" / "bin" / "dynoxide"

    # --- install ----------------------------------------------------------------------------

    def install(self) -> None:
        """PostgreSQL 15 from Debian's packages (if missing), the DynamoDB endpoint (built once
        by cargo) and the jars through Maven."""
        if not (PG_BIN / "initdb").exists():
            if not self._root or not shutil.which("apt-get"):
                raise StackError(
                    f"PostgreSQL 15 server binaries not found in {PG_BIN}; install "
                    "Debian's postgresql-15 package"
                )
            self.say("installing postgresql-15 from Debian's packages")
            self._run(["apt-get", "update", "-q"], "apt-get update")
            self._run(
                ["apt-get", "install", "-y", "-q", "postgresql-15"],
                "apt-get install",
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        self._install_dynoxide()
        pom = resources.files("replicator.stack").joinpath("pom.xml")
        stamp = self.home / "jars" / ".pom-sha1"
        digest = hashlib.sha1(pom.read_bytes()).hexdigest()
        if stamp.exists() and stamp.read_text() == digest and any(self.libs.glob("kafka_*.jar")):
            return
        if not shutil.which("mvn"):
            raise StackError("Maven (mvn) is needed to fetch the Kafka and Debezium jars")
        self.say("resolving Kafka 4.3 and Debezium 3.6 jars with Maven (cached in ~/.m2)")
        shutil.rmtree(self.home / "jars", ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with resources.as_file(pom) as pom_path:
            self._run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "-f",
                    str(pom_path),
                    "package",
                    f"-Dstack.build.dir={self.home / 'jars' / 'build'}",
                    f"-Dlibs.dir={self.libs}",
                    f"-Dplugins.dir={self.plugins}",
                ],
                "maven",
                log=self.logs / "maven.log",
            )
        stamp.write_text(digest)

    def _install_dynoxide(self) -> None:
        if self.dynoxide.exists():
            return
        cargo = shutil.which("cargo") or str(Path("~/.cargo/bin/cargo").expanduser())
        if not Path(cargo).exists():
            raise StackError(
                "Rust's cargo is needed once, to build the local DynamoDB endpoint (dynoxide "
                f"{self.cfg.dynoxide_version} from crates.io): install it with rustup"
            )
        version = self.cfg.dynoxide_version
        self.say(
            f"building the DynamoDB endpoint (dynoxide {version}) with cargo; the first build "
            "takes 4-8 minutes on 2 cores, later runs reuse it"
        )
        root = self.dynoxide.parent.parent
        building = root.with_name(root.name + ".building")  # renamed when complete
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        self._run(
            [
                cargo,
                "install",
                "dynoxide-rs",
                "--version",
                version,
                "--locked",
                "--no-default-features",
                "--features",
                "native-sqlite,http-server,cli",
                "--root",
                str(building),
            ],
            "building dynoxide",
            log=self.logs / "dynoxide-build.log",
        )
        shutil.rmtree(root, ignore_errors=True)
        building.rename(root)
        self.say(f"dynoxide built in {time.monotonic() - started:.0f}s: {self.dynoxide}")

    # --- up / down / status -----------------------------------------------------------------

    def up(self) -> None:
        """Start every part that is not running and wait until each is healthy."""
        self.install()
        for d in (self.logs, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        # A new endpoint state over Kafka data that consumers have already committed would
        # leave the replica empty while every offset says "applied" (see _rebuild_replica).
        fresh_endpoint = not self.dynamodb_state.exists() and not self._dynamodb_ready()
        kafka_has_data = (self.home / "kafka" / "data" / "meta.properties").exists()
        self._start_postgres()
        self._start_java("kafka", self._kafka_command(), self.cfg.kafka_port)
        self._start_dynamodb()
        self._wait("postgres", self._postgres_ready, self.logs / "postgres.log")
        self._prepare_database()
        self._wait("kafka", self._kafka_ready, self.logs / "kafka.log")
        self._start_java("connect", self._connect_command(), self.cfg.connect_port)
        self._wait("dynamodb", self._dynamodb_ready, self.logs / "dynamodb.log")
        self._wait("connect", self._connect_ready, self.logs / "connect.log")
        if fresh_endpoint and kafka_has_data:
            self._rebuild_replica()
        self.say(f"stack up in {time.monotonic() - started:.1f}s; logs in {self.logs}")

    def down(self, purge: bool = False) -> None:
        """Stop what `up` started (by recorded pid), in reverse order; purge deletes the data."""
        for name in ("connect", "dynamodb", "kafka"):
            self._stop_recorded(name)
        if (self._pg_data / "postmaster.pid").exists():
            self._pg(
                ["pg_ctl", "-D", str(self._pg_data), "-m", "fast", "-w", "stop"],
                "stop postgres",
                check=False,
            )
        if purge:
            shutil.rmtree(self._pg_root, ignore_errors=True)
            for sub in ("kafka", "connect", "postgres", "dynamodb", "run"):
                shutil.rmtree(self.home / sub, ignore_errors=True)

    def status(self) -> list[PartStatus]:
        return [
            PartStatus(
                "postgres",
                self._postgres_ready(),
                f"{self.s.postgres.host}:{self.s.postgres.port} data {self._pg_data}",
            ),
            PartStatus("kafka", self._kafka_ready(), self.s.kafka.bootstrap_servers),
            PartStatus("connect", self._connect_ready(), self.s.connector.url),
            PartStatus(
                "dynamodb",
                self._dynamodb_ready(),
                f"{self.s.dynamodb.endpoint_url} state {self.dynamodb_state}",
            ),
        ]

    # --- postgres ---------------------------------------------------------------------------

    @property
    def _pg_root(self) -> Path:
        """PostgreSQL refuses to run as root: as root, its files must be reachable by `postgres`."""
        preferred = self.home / "postgres"
        if not self._root or self._postgres_can_reach(self.home):
            return preferred
        tag = hashlib.sha1(str(self.home).encode()).hexdigest()[:12]
        return Path("/var/lib/postgresql/replicator-stack") / tag

    @property
    def _pg_data(self) -> Path:
        return self._pg_root / "data"

    def _postgres_can_reach(self, path: Path) -> bool:
        path.mkdir(parents=True, exist_ok=True)
        probe = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(path)],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def _pg(self, args: list[str], what: str, check: bool = True) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self._root:
            command = ["runuser", "-u", "postgres", "--", *command]
        self._run(command, what, check=check, log=self.logs / "postgres-ctl.log")

    def _start_postgres(self) -> None:
        if self._postgres_ready():
            return
        pg = self.s.postgres
        self._ensure_port_free("postgres", pg.port)
        root = self._pg_root
        root.mkdir(parents=True, exist_ok=True)
        if self._root:
            shutil.chown(root, "postgres", "postgres")
        if not (self._pg_data / "PG_VERSION").exists():
            pwfile = root / "pwfile"
            pwfile.write_text(pg.password.get_secret_value() + "\n")
            if self._root:
                shutil.chown(pwfile, "postgres", "postgres")
            pwfile.chmod(0o600)
            self._pg(
                [
                    "initdb",
                    "-D",
                    str(self._pg_data),
                    "-U",
                    pg.user,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                "initdb",
            )
            pwfile.unlink()
            (self._pg_data / "postgresql.auto.conf").write_text(
                "\n".join(
                    [
                        "wal_level = logical",
                        "max_replication_slots = 8",
                        "max_wal_senders = 8",
                        f"port = {pg.port}",
                        f"listen_addresses = '{pg.host}'",
                        f"unix_socket_directories = '{root}'",
                        "fsync = off",  # a disposable local stack; never for production
                        "synchronous_commit = off",
                        "full_page_writes = off",
                        "max_connections = 100",
                        "shared_buffers = 128MB",
                        "",
                    ]
                )
            )
            with (self._pg_data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host replication all {pg.host}/32 scram-sha-256\n")
        log = root / "postgres.log"
        self._pg(
            ["pg_ctl", "-D", str(self._pg_data), "-l", str(log), "-w", "-t", "60", "start"],
            f"start postgres (log {log})",
        )
        link = self.logs / "postgres.log"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(log)

    def _postgres_ready(self) -> bool:
        try:
            with psycopg.connect(
                self._admin_dsn().replace("connect_timeout=5", "connect_timeout=2")
            ):
                return True
        except psycopg.Error:
            return False

    def _admin_dsn(self) -> str:
        pg = self.s.postgres
        return pg.dsn().replace(f"dbname={pg.database}", "dbname=postgres")

    def _prepare_database(self) -> None:
        """Create the database, the design's source schema and what CDC needs (idempotent)."""
        pg = self.s.postgres
        with psycopg.connect(self._admin_dsn(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [pg.database]
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(pg.database)))
        schema = resources.files("replicator.stack").joinpath("sql", "source_schema.sql")
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            # Once prepared, `up` (which also brings back one part that stopped) runs no DDL:
            # REPLICA IDENTITY and the schema's statements lock the tables, and under live
            # writes that waits on them or deadlocks with them.
            if self._database_prepared(conn):
                return
            conn.execute(schema.read_text())
            prepare(self.s, conn)

    def _database_prepared(self, conn: psycopg.Connection[Any]) -> bool:
        """Read-only: the mapped tables exist with REPLICA IDENTITY FULL, the publication holds
        exactly them and the heartbeat and signal tables, and the replication role logs in
        with its password and may read them."""
        pg = self.s.postgres
        tables = [t.source for t in self.s.tables]
        published = {*tables, "dbo.debezium_heartbeat", "dbo.debezium_signal"}
        full = conn.execute(
            "SELECT count(*) FROM unnest(%s::text[]) t JOIN pg_class c ON c.oid = to_regclass(t) "
            "WHERE c.relreplident = 'f'",
            [tables],
        ).fetchone()
        if full is None or full[0] != len(tables):
            return False
        rows = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
            [self.s.connector.publication_name],
        ).fetchall()
        if {r[0] for r in rows} != published:
            return False
        try:
            with psycopg.connect(pg.dsn(replication_role=True), connect_timeout=5) as role:
                readable = role.execute(
                    "SELECT bool_and(has_table_privilege(t, 'SELECT')) FROM unnest(%s::text[]) t",
                    [sorted(published)],
                ).fetchone()
        except psycopg.Error:
            return False
        return bool(readable and readable[0])

    # --- kafka and connect ------------------------------------------------------------------

    def _java(self, heap: str, log_name: str, main: str, *args: str) -> list[str]:
        log4j = self.home / "log4j2.properties"
        log4j.write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.out.type = Console",
                    "appender.out.name = OUT",
                    "appender.out.layout.type = PatternLayout",
                    "appender.out.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.out.ref = OUT",
                    "logger.reflections.name = org.reflections",
                    "logger.reflections.level = ERROR",
                    "",
                ]
            )
        )
        return [
            "java",
            "-Xms256m",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dreplicator.stack={self.home}/{log_name}",  # marks our processes
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def _kafka_command(self) -> list[str]:
        c = self.cfg
        data = self.home / "kafka" / "data"
        props = self.home / "kafka" / "server.properties"
        props.parent.mkdir(parents=True, exist_ok=True)
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{c.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{c.kafka_port},CONTROLLER://127.0.0.1:{c.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{c.kafka_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=3",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.cleaner.backoff.ms=5000",
                    # Topics made before the connector config bounded compaction get it too:
                    # the consumer refuses topics that keep a deleted row's events for good.
                    "log.cleaner.max.compaction.lag.ms=604800000",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            cluster_id = self._java_tool("kafka.tools.StorageTool", "random-uuid").strip()
            self._java_tool(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
                "--ignore-formatted",
            )
        return self._java(c.kafka_heap, "kafka", "kafka.Kafka", str(props))

    def _java_tool(self, main: str, *args: str) -> str:
        done = subprocess.run(
            ["java", "-cp", f"{self.libs}/*", main, *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(f"{main} {args[0]} failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    def _connect_command(self) -> list[str]:
        c, k = self.cfg, self.s.kafka
        folder = self.home / "connect"
        folder.mkdir(parents=True, exist_ok=True)
        secrets = folder / "secrets.properties"
        secrets.write_text(
            f"replication_password={self.s.postgres.replication_password.get_secret_value()}\n"
        )
        secrets.chmod(0o600)
        props = folder / "worker.properties"
        props.write_text(
            "\n".join(
                [
                    f"bootstrap.servers={k.bootstrap_servers}",
                    "group.id=replicator-connect",
                    "key.converter=org.apache.kafka.connect.json.JsonConverter",
                    "value.converter=org.apache.kafka.connect.json.JsonConverter",
                    "key.converter.schemas.enable=false",
                    "value.converter.schemas.enable=false",
                    "config.storage.topic=_connect-configs",
                    "offset.storage.topic=_connect-offsets",
                    "status.storage.topic=_connect-status",
                    "config.storage.replication.factor=1",
                    "offset.storage.replication.factor=1",
                    "status.storage.replication.factor=1",
                    "offset.flush.interval.ms=1000",
                    # A broker that does not answer past the worker's session (a pause, a GC
                    # stall) makes the worker rejoin under a new member id; the leader then
                    # holds the "departed" member's connector and task this long before it
                    # starts them again. Kafka's default, 5 minutes, is 5 minutes of no CDC.
                    f"scheduled.rebalance.max.delay.ms={CONNECT_REBALANCE_DELAY_MS}",
                    f"listeners=http://127.0.0.1:{c.connect_port}",
                    "rest.advertised.host.name=127.0.0.1",
                    f"plugin.path={self.plugins}",
                    # Secrets reach connector configs by reference: ${file:<path>:<key>}.
                    "config.providers=file",
                    "config.providers.file.class="
                    "org.apache.kafka.common.config.provider.FileConfigProvider",
                    "",
                ]
            )
        )
        return self._java(
            c.connect_heap, "connect", "org.apache.kafka.connect.cli.ConnectDistributed", str(props)
        )

    def secrets_file(self) -> Path:
        return self.home / "connect" / "secrets.properties"

    def _kafka_ready(self) -> bool:
        admin = AdminClient(
            {
                "bootstrap.servers": self.s.kafka.bootstrap_servers,
                "socket.connection.setup.timeout.ms": 1000,
                "log_level": 0,  # refused connections are expected while it starts
            }
        )
        try:
            admin.list_topics(timeout=2)
            return True
        except Exception:  # KafkaException on timeout; any failure means not ready
            return False

    def _connect_ready(self) -> bool:
        try:
            plugins = httpx.get(f"{self.s.connector.url}/connector-plugins", timeout=2)
        except httpx.HTTPError:
            return False
        return plugins.status_code == 200 and DEBEZIUM_CLASS in plugins.text

    # --- dynamodb endpoint ------------------------------------------------------------------

    def _start_dynamodb(self) -> None:
        if self._dynamodb_ready():
            return
        self.dynamodb_state.parent.mkdir(parents=True, exist_ok=True)
        port = self.cfg.dynamodb_port
        command = [
            str(self.dynoxide),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db-path",
            str(self.dynamodb_state),
        ]
        self._spawn("dynamodb", command, port)

    def _rebuild_replica(self) -> None:
        """The endpoint starts empty over a Kafka that kept its data (its state file was
        deleted, say): create the mapped tables and forget the live group's committed offsets,
        so that `run` replays the compacted topics and rebuilds the replica from them."""

        client = dynamodb_client(self.s.dynamodb)
        for mapping in self.s.tables:
            ensure_table(client, mapping)
        # Backfill groups wrote into this endpoint too: their offsets are as stale.
        live, prefix = self.s.kafka.group_id, self.s.backfill.group_prefix + "."
        admin = AdminClient({"bootstrap.servers": self.s.kafka.bootstrap_servers})
        try:
            listed = admin.list_consumer_groups().result(timeout=10).valid
            groups = sorted(
                g.group_id for g in listed if g.group_id == live or g.group_id.startswith(prefix)
            )
            if groups:
                for done in admin.delete_consumer_groups(groups).values():
                    done.result(timeout=10)
        except KafkaException as exc:
            raise StackError(
                "the DynamoDB endpoint started with no state while Kafka kept its data, and "
                f"resetting the consumer groups failed ({exc}); stop every consumer and run "
                "`replicator stack up` again, or `stack down --purge` to start over"
            ) from exc
        self.say(
            "the DynamoDB endpoint started with no state while Kafka kept its data: created "
            f"the mapped tables and reset the consumer groups {groups or '(none yet)'}, so "
            "`replicator run` rebuilds the replica from the compacted topics"
        )

    def _dynamodb_ready(self) -> bool:
        if not self.s.dynamodb.endpoint_url:
            return False
        try:
            return httpx.get(self.s.dynamodb.endpoint_url, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    # --- processes --------------------------------------------------------------------------

    def _start_java(self, name: str, command: list[str], port: int) -> None:
        if self._alive(name):
            return
        self._spawn(name, command, port)

    def _spawn(self, name: str, command: list[str], port: int) -> None:
        self._ensure_port_free(name, port)
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.home,
        )
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid} {_start_time(proc.pid)}\n")

    def _alive(self, name: str) -> bool:
        pid = self._recorded_pid(name)
        return pid is not None

    def _recorded_pid(self, name: str) -> int | None:
        """The pid in run/<name>.pid if that very process (same start time) still runs."""
        path = self.run_dir / f"{name}.pid"
        try:
            pid_text, started = path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if _start_time(pid) != started:
            return None
        return pid

    def _stop_recorded(self, name: str) -> None:
        pid = self._recorded_pid(name)
        path = self.run_dir / f"{name}.pid"
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._recorded_pid(name) is not None:
                time.sleep(0.2)
            if self._recorded_pid(name) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        path.unlink(missing_ok=True)

    def _wait(self, name: str, ready: Callable[[], bool], log: Path) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            if ready():
                self.say(f"{name} ready")
                return
            if (
                name != "postgres"
                and (self.run_dir / f"{name}.pid").exists()
                and not self._alive(name)
            ):
                raise StackError(f"{name} exited during start-up; see {log}\n{_tail(log)}")
            time.sleep(0.5)
        raise StackError(
            f"{name} not ready after {self.cfg.start_timeout_s:.0f}s; see {log}\n{_tail(log)}"
        )

    def _ensure_port_free(self, name: str, port: int) -> None:
        """Bind the port as the server will: a listener is not the only holder (a client
        socket whose local port it is blocks a bind too)."""
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError as exc:
                error = exc.strerror or str(exc)
        raise StackError(
            f"cannot start {name}: port {port} is not free ({error}); held by "
            f"{_port_holder(port)}. Stop that, or move the part with the stack's port settings "
            "(stack.*_port, and the matching client setting)"
        )

    def _run(
        self,
        command: list[str],
        what: str,
        check: bool = True,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as out:
                out.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        if check and done.returncode != 0:
            where = f"; see {log}" if log else ""
            raise StackError(
                f"{what} failed (exit {done.returncode}){where}\n"
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )


def _start_time(pid: int) -> str | None:
    """Process start time in clock ticks (field 22 of /proc/<pid>/stat): tells pid reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited
        return None
    return fields[19]


def _port_holder(port: int) -> str:
    """Who holds a local TCP port, from /proc: "pid 123 (java), listening", or what is known."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                state = "listening" if fields[3] == "0A" else "a connection's local end"
                inodes[fields[9]] = state
    if not inodes:
        return "an unknown process"
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                inode = target[8:-1] if target.startswith("socket:[") else ""
                if inode in inodes:
                    pid = fd_dir.parent.name
                    comm = (fd_dir.parent / "comm").read_text().strip()
                    found.append(f"pid {pid} ({comm}), {inodes[inode]}")
                    break
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return "; ".join(sorted(set(found))) or f"a socket ({', '.join(sorted(set(inodes.values())))})"


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
