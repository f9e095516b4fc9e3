"""A single-node Kafka broker on 127.0.0.1 that needs only Java and Maven, not Docker.

Development machines and CI runners often have a JDK but no container engine. Maven fetches
the broker jars once into a cache; each broker then runs from that classpath in KRaft
combined mode, with every internal topic at replication factor 1 so that consumer groups
and transactions work on one node.

Layout under ``$STREAM_ANOMALY_HOME`` (default ``~/.cache/stream-anomaly``)::

    kafka-<version>/libs/*.jar     shared jar cache (one per Kafka version)
    broker-<port>/                 one broker: server.properties, data/, broker.pid, broker.log

Usage: ``python -m processor.localbroker start|stop|status [--port N] [--fresh]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NoReturn

KAFKA_VERSION = "4.1.1"
DEFAULT_PORT = 9092
HOME_ENV = "STREAM_ANOMALY_HOME"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0

_HOST = "127.0.0.1"
_PID_FILE = "broker.pid"
_LOG_FILE = "broker.log"
_PROPERTIES_FILE = "server.properties"
_DATA_DIR = "data"
_LOG_TAIL_LINES = 40
#: A single-threaded collector and a large young generation: on a small machine that
#: the broker shares with its clients, G1's young pauses reached 100 ms now and then
#: (its threads wait for a core); this collects every few seconds under load, ~20 ms.
_JVM_OPTS = (
    "-Xms1g",
    "-Xmx1g",
    "-Xmn256m",
    "-XX:+UseSerialGC",
    "-Djava.awt.headless=true",
)
#: Popen handles of brokers this interpreter launched, so stop() can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(RuntimeError):
    """A local broker could not be fetched, started or stopped; the message says why."""


@dataclass(frozen=True)
class BrokerStatus:
    """What status() found: enough for a one-line report or a readiness decision."""

    running: bool
    answering: bool
    pid: int | None
    bootstrap: str
    state_dir: Path


def home_dir() -> Path:
    """Root of the jar cache and the default broker state, overridable for CI caches."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stream-anomaly"


def bootstrap_for(port: int) -> str:
    """The bootstrap string clients use for a local broker on ``port``."""
    return f"{_HOST}:{port}"


def default_state_dir(port: int) -> Path:
    """One directory per port, so several brokers can coexist on one machine."""
    return home_dir() / f"broker-{port}"


def jar_dir(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """Where the broker classpath for ``version`` lives once fetched."""
    return (cache_dir or home_dir()) / f"kafka-{version}" / "libs"


def _jars_complete(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file() and any(libs.glob("log4j-core-*.jar"))


def ensure_jars(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """Return the jar folder for ``version``, fetching it with Maven on first use.

    Maven writes into a private temporary folder that is renamed into place only when
    complete, so concurrent first runs (parallel test workers, two shells) never see a
    half-filled classpath: the loser of the rename just discards its copy.
    """
    libs = jar_dir(version, cache_dir)
    if _jars_complete(libs, version):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is not on PATH; it is needed once to download the Kafka "
            f"{version} jars into {libs.parent}"
        )
    target = libs.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"fetching Kafka {version} jars with Maven into {target} (first use only)...",
        file=sys.stderr,
        flush=True,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        pom = staging / "pom.xml"
        pom.write_bytes(resources.files("processor").joinpath("kafka/pom.xml").read_bytes())
        proc = subprocess.run(
            [
                mvn, "-q", "-B", "dependency:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={staging / 'libs'}",
                f"-Dkafka.version={version}",
            ],
            cwd=staging,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not _jars_complete(staging / "libs", version):
            detail = _tail_text(proc.stdout + proc.stderr, 15)
            raise BrokerError(f"Maven could not fetch Kafka {version} jars\n{detail}")
        if target.exists() and not _jars_complete(libs, version):
            shutil.rmtree(target, ignore_errors=True)  # leftover of an interrupted layout
        with contextlib.suppress(OSError):
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _jars_complete(libs, version):
        raise BrokerError(f"Kafka jars missing from {libs} after fetching them")
    return libs


def _java() -> str:
    """Locate java (JAVA_HOME first, as the Kafka scripts do) and insist on 17+."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise BrokerError("Java 17+ is needed but no java is on PATH or in JAVA_HOME")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_x" style
            major = int(match.group(2))
        if major < 17:
            raise BrokerError(f"Kafka {KAFKA_VERSION} needs Java 17 or newer; {java} is {major}")
    return java


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _log_tail(log: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The end of the broker log without Java stack frames, which bury the actual cause."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no broker log)"
    kept = [line for line in text.splitlines() if not line.lstrip().startswith(("at ", "..."))]
    return _tail_text("\n".join(kept), lines)


def _last_error(log: Path) -> str:
    """The newest ERROR/FATAL of the broker log, preferring the exception text that follows."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for i in range(len(lines) - 1, -1, -1):
        match = re.search(r"\] (?:ERROR|FATAL) (.*)", lines[i])
        if match:
            following = lines[i + 1] if i + 1 < len(lines) else ""
            exc = re.match(r"[\w.$]+(?:Exception|Error): (.+)", following)
            return (exc.group(1) if exc else match.group(1))[:300]
    return ""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _answering(bootstrap: str, timeout: float) -> bool:
    """True once the broker serves metadata listing itself, i.e. clients can use it."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return len(metadata.brokers) > 0


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                props[key.strip()] = value.strip()
    return props


def _server_properties(port: int, controller_port: int, data_dir: Path) -> Mapping[str, str]:
    """Single-node KRaft settings; internal topics are sized for one broker and few partitions.

    Fifty partitions per internal topic (the default) makes the first consumer group and the
    first transaction take seconds on a small machine; one is plenty locally.
    """
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{_HOST}:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }


def _write_properties(path: Path, props: Mapping[str, str]) -> None:
    body = "".join(f"{key}={value}\n" for key, value in props.items())
    path.write_text("# Written by processor.localbroker on every start; edits are lost.\n" + body)


def _cluster_id() -> str:
    """A Kafka cluster id (URL-safe base64 UUID), made here to spare a JVM start."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids ids that look like CLI flags
            return text


def _read_pid(state: Path) -> int | None:
    try:
        return int((state / _PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int, state: Path) -> bool:
    """Whether ``pid`` is still this state dir's broker (not a zombie, not a reused pid)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process reusing the number
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
        return "kafka.Kafka" in cmdline and str(state) in cmdline
    return True


def _running_pid(state: Path) -> int | None:
    """The live broker pid for ``state``, clearing a stale pid file on the way."""
    pid = _read_pid(state)
    if pid is None:
        return None
    if _alive(pid, state):
        return pid
    with contextlib.suppress(OSError):
        (state / _PID_FILE).unlink()
    return None


def status(port: int = DEFAULT_PORT, *, state_dir: Path | None = None) -> BrokerStatus:
    """Report whether the broker for ``port`` runs and answers metadata requests."""
    state = (state_dir or default_state_dir(port)).resolve()
    pid = _running_pid(state)
    bootstrap = bootstrap_for(port)
    answering = pid is not None and _accepting(port) and _answering(bootstrap, 3.0)
    return BrokerStatus(pid is not None, answering, pid, bootstrap, state)


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    """Serialise start/stop per state dir: two concurrent starts would both launch a JVM,
    and the loser's cleanup would clobber the winner's pid file."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _wait_ready(
    pid: int, state: Path, port: int, timeout: float, child: subprocess.Popen[bytes] | None
) -> None:
    bootstrap = bootstrap_for(port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            raise BrokerError(f"broker exited with status {child.returncode} during startup")
        if child is None and not _alive(pid, state):
            raise BrokerError("broker process exited during startup")
        if _accepting(port) and _answering(bootstrap, 2.0):
            return
        time.sleep(0.25)
    raise BrokerError(f"broker did not answer on {bootstrap} within {timeout:.0f} s")


def _format_storage(java: str, libs: Path, state: Path, props: Path, log: Path) -> None:
    cmd = [
        java, *_log_opts(state, log), "-cp", str(libs / "*"), "kafka.tools.StorageTool",
        "format", "--ignore-formatted", "-t", _cluster_id(), "-c", str(props),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = _tail_text(proc.stdout + proc.stderr, 15) or _log_tail(log, 15)
        raise BrokerError(f"formatting broker storage in {state} failed\n{detail}")


def _log_opts(state: Path, log: Path) -> list[str]:
    return [
        f"-Dlog4j2.configurationFile={state / 'log4j2.properties'}",
        f"-Dkafka.logfile={log}",
    ]


def start(
    port: int = DEFAULT_PORT,
    controller_port: int | None = None,
    *,
    fresh: bool = False,
    state_dir: Path | None = None,
    cache_dir: Path | None = None,
    version: str = KAFKA_VERSION,
    timeout: float = START_TIMEOUT_S,
) -> str:
    """Start (or find already running) the broker on ``port``; return its bootstrap string.

    ``state_dir`` and ``cache_dir`` are separate so tests can run a throwaway broker while
    still reusing the jar cache. ``fresh`` wipes the broker's data first. When
    ``controller_port`` is omitted the previous one is reused, else ``port + 1`` if free.
    """
    state = (state_dir or default_state_dir(port)).resolve()
    with _locked(state):
        return _start(
            port, controller_port, state, fresh=fresh, cache_dir=cache_dir, version=version,
            timeout=timeout,
        )


def _start(
    port: int,
    controller_port: int | None,
    state: Path,
    *,
    fresh: bool,
    cache_dir: Path | None,
    version: str,
    timeout: float,
) -> str:
    log = state / _LOG_FILE
    bootstrap = bootstrap_for(port)
    pid = _running_pid(state)
    if pid is not None and fresh:
        _stop(state, STOP_TIMEOUT_S)
        pid = None
    if pid is not None:
        try:
            _wait_ready(pid, state, port, timeout, _CHILDREN.get(pid))
        except BrokerError as exc:
            raise BrokerError(f"{exc} (pid {pid}; see {log})\n{_log_tail(log)}") from None
        return bootstrap

    if not _port_free(port):
        raise BrokerError(f"{bootstrap} is already in use by another process; pick --port")
    props_path = state / _PROPERTIES_FILE
    if controller_port is None:
        previous = _read_properties(props_path).get("controller.quorum.voters", "")
        match = re.fullmatch(r"1@[^:]+:(\d+)", previous)
        if match:
            controller_port = int(match.group(1))
        else:
            controller_port = port + 1 if _port_free(port + 1) else _free_port()
    if controller_port == port:
        raise BrokerError("the controller port must differ from the broker port")
    if not _port_free(controller_port):
        raise BrokerError(
            f"controller port {_HOST}:{controller_port} is already in use; pick --controller-port"
        )

    java = _java()
    libs = ensure_jars(version, cache_dir)
    data = state / _DATA_DIR
    if fresh:
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(exist_ok=True)
    if log.exists():
        log.replace(state / f"{_LOG_FILE}.1")  # keep the previous run for post-mortems
    (state / "log4j2.properties").write_bytes(
        resources.files("processor").joinpath("kafka/log4j2.properties").read_bytes()
    )
    _write_properties(props_path, _server_properties(port, controller_port, data))
    if not (data / "meta.properties").exists():
        _format_storage(java, libs, state, props_path, log)

    cmd = [
        java, *_JVM_OPTS, *_log_opts(state, log),
        "-cp", str(libs / "*"), "kafka.Kafka", str(props_path),
    ]
    with log.open("ab") as out:
        child = subprocess.Popen(
            cmd,
            cwd=state,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the shell that ran `start`
        )
    _CHILDREN[child.pid] = child
    (state / _PID_FILE).write_text(f"{child.pid}\n")
    try:
        _wait_ready(child.pid, state, port, timeout, child)
    except BrokerError as exc:
        _stop(state, STOP_TIMEOUT_S)
        cause = _last_error(log)
        summary = f"{exc}: {cause}" if cause else str(exc)
        raise BrokerError(f"{summary}\n--- last lines of {log} ---\n{_log_tail(log)}") from None
    return bootstrap


def stop(
    port: int = DEFAULT_PORT, *, state_dir: Path | None = None, timeout: float = STOP_TIMEOUT_S
) -> bool:
    """Stop the broker gracefully (SIGTERM), forcefully after ``timeout``; True if one ran."""
    state = (state_dir or default_state_dir(port)).resolve()
    if not state.is_dir():
        return False
    with _locked(state):
        return _stop(state, timeout)


def _stop(state: Path, timeout: float) -> bool:
    pid = _running_pid(state)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid, state) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid, state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        child = _CHILDREN.get(pid)
        if child is not None:
            child.wait(5)
        else:
            end = time.monotonic() + 5
            while _alive(pid, state) and time.monotonic() < end:
                time.sleep(0.1)
    _CHILDREN.pop(pid, None)
    with contextlib.suppress(OSError):
        (state / _PID_FILE).unlink()
    return True


class _UsageError(Exception):
    """argparse's complaint, turned into a return code instead of an exit."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _port(text: str) -> int:
    """A TCP port a broker can listen on (1-65534: the controller takes port + 1)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65534:
        raise argparse.ArgumentTypeError(f"port {port} is not between 1 and 65534")
    return port


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Run a single-node Kafka broker on 127.0.0.1.")
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="client port (9092)")
    parser.add_argument(
        "--controller-port", type=_port, default=None, help="KRaft controller port (port + 1)"
    )
    parser.add_argument("--fresh", action="store_true", help="start: delete all broker data first")
    return parser


def cli(argv: list[str], prog: str = "anomaly broker") -> int:
    """``start|stop|status``; prints the bootstrap address on stdout, problems as one line.

    Exit codes: 0 success (status: running), 1 status: not running, 2 usage or broker error.
    """
    try:
        args = _parser(prog).parse_args(argv)
    except _UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        if args.action == "start":
            t0 = time.monotonic()
            bootstrap = start(args.port, args.controller_port, fresh=args.fresh)
            print(f"broker ready after {time.monotonic() - t0:.1f} s", file=sys.stderr)
            print(bootstrap)
            return 0
        if args.action == "stop":
            stopped = stop(args.port)
            print(f"stopped {bootstrap_for(args.port)}" if stopped else "not running")
            return 0
        st = status(args.port)
        if not st.running:
            print(f"not running ({st.bootstrap}, state {st.state_dir})")
            return 1
        state_word = "running" if st.answering else "running, not answering yet"
        print(f"{state_word} (pid {st.pid}) at {st.bootstrap}, state {st.state_dir}")
        return 0
    except BrokerError as exc:
        first, _, rest = str(exc).partition("\n")
        print(f"{prog}: error: {first}", file=sys.stderr)
        if rest:
            print(rest, file=sys.stderr)
        return 2
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:], prog="python -m processor.localbroker"))
