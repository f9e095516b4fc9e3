"""Shared fixtures: a real Kafka broker for every test that asks for one.

Broker tests never skip. The broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` (CI
service or a developer's own cluster), a Docker container when a daemon answers, or the
Docker-free local broker of :mod:`processor.localbroker` (needs only Java and Maven).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # typed there; admin re-exports it implicitly

from processor import localbroker
from tests.kafka_helpers import free_ports

KAFKA_IMAGE = "apache/kafka:4.1.1"
TOPIC_READY_TIMEOUT_S = 30.0


class TopicFactory(Protocol):
    """Creates a uniquely named topic and returns its name once every partition has a leader."""

    def __call__(
        self,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
        prefix: str = "test",
    ) -> str: ...


def _docker_available() -> bool:
    """A quick, silent probe: no daemon (the usual case on CI runners here) costs < 2 s."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _wait_until_answering(bootstrap: str, timeout: float) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        try:
            if admin.list_topics(timeout=2).brokers:
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@contextlib.contextmanager
def _kafka_container() -> Iterator[str]:
    """A KRaft ``apache/kafka`` container; yields its bootstrap servers.

    testcontainers' ``KafkaContainer`` drives Confluent images (``/etc/confluent/docker``
    scripts, a version check against Confluent tags), so it cannot run the official image.
    The same trick is used here instead: the container waits for a start script that sets
    the advertised listener once the mapped host port exists. Transaction markers travel
    over the inter-broker listener, so that one is advertised as reachable inside.
    """
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(KAFKA_IMAGE).with_exposed_ports(9093)
    for key, value in {
        "CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qk",
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://0.0.0.0:9093,BROKER://0.0.0.0:9092,"
        "CONTROLLER://0.0.0.0:9094",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,"
        "CONTROLLER:PLAINTEXT",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }.items():
        container.with_env(key, value)
    script = "/tc-start.sh"
    container.with_command(f'sh -c "while [ ! -f {script} ]; do sleep 0.1; done; sh {script}"')
    container.start()
    try:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(9093)
        body = (
            f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},BROKER://localhost:9092\n"
            "exec /etc/kafka/docker/run\n"
        ).encode()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(script.lstrip("/"))
            info.size = len(body)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(body))
        container.get_wrapped_container().put_archive("/", archive.getvalue())
        bootstrap = f"{host}:{port}"
        _wait_until_answering(bootstrap, localbroker.START_TIMEOUT_S)
        yield bootstrap
    finally:
        container.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a broker that lives for the whole test session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return

    if _docker_available():
        with _kafka_container() as bootstrap:
            yield bootstrap
        return

    # Throwaway state per session, but the shared jar cache, so only the first run downloads.
    state: Path = tmp_path_factory.mktemp("kafka-broker")
    port, controller_port = free_ports(2)
    bootstrap = localbroker.start(port, controller_port, fresh=True, state_dir=state)
    try:
        yield bootstrap
    finally:
        localbroker.stop(port, state_dir=state)


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[TopicFactory]:
    """Create topics unique to one test; they are deleted again when it ends."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def create(
        partitions: int = 1, config: Mapping[str, str] | None = None, prefix: str = "test"
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        # replication_factor=-1: the broker's default, so the same test runs on 1 or 3 nodes.
        topic = NewTopic(
            name, num_partitions=partitions, replication_factor=-1, config=dict(config or {})
        )
        admin.create_topics([topic], operation_timeout=TOPIC_READY_TIMEOUT_S)[name].result(
            timeout=TOPIC_READY_TIMEOUT_S
        )
        created.append(name)
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
        while True:
            meta = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} has no leader for every partition")
            time.sleep(0.1)

    yield create
    if created:
        for future in admin.delete_topics(created, operation_timeout=10).values():
            # Cleanup only: a leftover topic on a shared cluster is harmless.
            with contextlib.suppress(Exception):
                future.result(timeout=15)


# -- fault-injection report ------------------------------------------------------------

@dataclass(frozen=True)
class FaultCounts:
    """What one fault-injection run did to the stream, for the end-of-session table."""

    test: str
    inputs: int
    scored: int
    dead_lettered: int
    duplicates: int
    lost: int
    restarts: int
    score_mismatches: int


FAULT_REPORT = pytest.StashKey[list[FaultCounts]]()
_FAULT_COLUMNS = ("inputs", "scored", "dead_lettered", "duplicates", "lost", "restarts",
                  "score_mismatches")


class FaultReport:
    """Collects the counts of the running test into the session's report; `label` names the
    row (the test's name by default)."""

    def __init__(self, rows: list[FaultCounts], test: str) -> None:
        self._rows = rows
        self._test = test

    def add(self, *, inputs: int, scored: int, dead_lettered: int, duplicates: int, lost: int,
            restarts: int, score_mismatches: int, label: str | None = None) -> None:
        self._rows.append(FaultCounts(label or self._test, inputs, scored, dead_lettered,
                                      duplicates, lost, restarts, score_mismatches))


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> FaultReport:
    """Recorded before a test asserts, so a failing run still shows what it saw."""
    rows = request.config.stash.setdefault(FAULT_REPORT, [])
    return FaultReport(rows, request.node.name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    rows = config.stash.get(FAULT_REPORT, [])
    if not rows:
        return
    headers = ("test", *(c.replace("_", " ") for c in _FAULT_COLUMNS))
    table = [(r.test, *(str(getattr(r, c)) for c in _FAULT_COLUMNS)) for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    terminalreporter.section("fault-injection report")
    terminalreporter.write_line(line(headers))
    terminalreporter.write_line(line(tuple("-" * w for w in widths)))
    for row in table:
        terminalreporter.write_line(line(row))
