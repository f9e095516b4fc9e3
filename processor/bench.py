"""`anomaly bench`: how fast the model is, and how close the processor gets to it.

One run measures, on one machine: the naive baseline (`model.predict` per record),
batched inference alone, end-to-end throughput through a real broker, latency at fixed
offered loads, and memory per key. It prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from confluent_kafka import Consumer, Producer

from processor.config import Settings
from processor.stream.clients import base_config, ensure_topics, producer_config
from processor.stream.launch import start_processor, stop_processor, with_run_topics

log = structlog.get_logger(__name__)

BATCH_SIZES = (1, 16, 64, 256, 1024, 4096)


# -- the model ---------------------------------------------------------------------------

def bench_model(store: Path, name: str, window: int, units: int,
                season: int | str = "none") -> Path:
    """The newest stored version, or a real LSTM trained briefly on a NAB series."""
    from processor.model_store import latest_version, save_version

    found = latest_version(store, name)
    if found is not None:
        return found
    from processor.dataset import read_csv
    from processor.demo import DEFAULT_SERIES, _nab_dir
    from processor.train import TrainConfig, train

    series = read_csv(_nab_dir() / "data" / DEFAULT_SERIES).slice(0, 6000)
    cfg = TrainConfig(name=name, window=window, units=units, epochs=2, season=season,
                      verbose=0)
    outcome = train([series], cfg, "bench")
    return save_version(store, outcome.metadata, outcome.network)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "python": platform.python_version(), "platform": platform.platform()}


# -- inference ---------------------------------------------------------------------------

def naive_rps(version_dir: Path, seconds: float) -> float:
    """One `model.predict` call per record: the approach this project replaces."""
    from processor.model_store import load_version

    model = load_version(version_dir)
    network = model.predictor.model
    x = np.random.default_rng(0).normal(size=(1, model.input_width, 1)).astype(np.float32)
    network.predict(x, verbose=0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        network.predict(x, verbose=0)
        n += 1
    return n / (time.perf_counter() - start)


def inference_rps(version_dir: Path, seconds_each: float) -> dict[int, float]:
    """Batched calls of the processor's predictor on windows already in memory."""
    from processor.model_store import load_version

    predictor = load_version(version_dir).predictor
    rng = np.random.default_rng(0)
    out: dict[int, float] = {}
    for size in BATCH_SIZES:
        x = rng.normal(size=(size, predictor.window)).astype(np.float32)
        predictor(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds_each:
            predictor(x)
            n += size
        out[size] = n / (time.perf_counter() - start)
    return out


# -- end to end --------------------------------------------------------------------------

def _series_rows(keys: int, per_key: int, start_ms: int) -> list[tuple[str, int, float]]:
    """Real values (the NAB machine-temperature series) spread over many keys."""
    from processor.dataset import read_csv
    from processor.demo import DEFAULT_SERIES, _nab_dir

    values = read_csv(_nab_dir() / "data" / DEFAULT_SERIES).values
    rows = []
    for i in range(per_key):
        for k in range(keys):
            v = float(values[(i + 97 * k) % len(values)])
            rows.append((f"key-{k:07d}", start_ms + i * 300_000, v))
    return rows


def _produce(settings: Settings, rows: list[tuple[str, int, float]],
             rate: float | None = None,
             sent_at: dict[bytes, collections.deque[float]] | None = None) -> None:
    """Produce `rows`, all at once or paced at `rate` records/s.

    Payloads are encoded before the clock starts and paced records go out in small
    bursts, so the generator (which shares the machine with the processor) costs little.
    `sent_at` receives each record's send time, per key in order.
    """
    producer = Producer(producer_config(settings, **{"linger.ms": 5}))
    messages = [(key.encode(), json.dumps({"key": key, "timestamp": ts, "value": value}
                                          ).encode()) for key, ts, value in rows]
    topic = settings.input_topic
    start = time.perf_counter()
    sent = 0
    while sent < len(messages):
        due = len(messages)
        if rate is not None:
            due = min(due, int((time.perf_counter() - start) * rate) + 1)
            if due <= sent:
                time.sleep(0.001)
                continue
        now = time.time()
        for key, body in messages[sent:due]:
            if sent_at is not None:  # before produce: the reader may see the result first
                sent_at[key].append(now)
            while True:
                try:
                    producer.produce(topic, body, key=key)
                    break
                except BufferError:
                    producer.poll(0.05)
        sent = due
        producer.poll(0)
    producer.flush(120)


class BenchError(Exception):
    """The benchmark cannot go on (the processor died, records went missing)."""


def _processor(settings: Settings, log_path: Path, extra_env: dict[str, str]
               ) -> subprocess.Popen[bytes]:
    # INFO at least: readiness is read from the processor's log.
    return start_processor(settings, log_path, {"ANOMALY_HTTP_PORT": "-1", **extra_env,
                                                "ANOMALY_LOG_LEVEL": "INFO"})


def _alive(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Stop at once, with the processor's own last words, if it has exited."""
    code = proc.poll()
    if code is None:
        return
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    raise BenchError(f"the processor exited with status {code}: "
                     f"{lines[-1][:300] if lines else '(no output)'} (log: {log_path})")


def _scored_consumer(settings: Settings) -> Consumer:
    c = Consumer({**base_config(settings), "group.id": f"bench-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    c.subscribe([settings.scored_topic])
    return c


def end_to_end(settings: Settings, warm_up: list[tuple[str, int, float]],
               rows: list[tuple[str, int, float]], log_path: Path,
               extra_env: dict[str, str]) -> dict[str, Any]:
    """Time a processor draining a pre-filled input topic, every key's window already full.

    A first processor scores `warm_up` (every key's first window, which the model does
    not score) and stops cleanly; then `rows` are produced and a second processor, which
    restores the windows from the changelog, drains them. The time is taken from the
    scored records' own timestamps (set as each batch is produced): from the end of the
    first batch to the end of the last, counting the records after the first batch, so
    neither start-up nor how fast this reader keeps up enters the rate.
    """
    consumer = _scored_consumer(settings)
    try:
        proc = _processor(settings, log_path, extra_env)
        try:
            _wait_ready(log_path, proc)
            _produce(settings, warm_up)
            _drain(consumer, len(warm_up), proc, log_path)
        finally:
            _stop(proc)
        _produce(settings, rows)
        proc = _processor(settings, log_path, extra_env)
        stamps: list[int] = []
        cpu_start: tuple[float, dict[str, float]] | None = None
        try:
            deadline = time.perf_counter() + 900
            while len(stamps) < len(rows) and time.perf_counter() < deadline:
                _alive(proc, log_path)
                stamps.extend(m.timestamp()[1] for m in consumer.consume(5000, 0.2)
                              if not m.error())
                if stamps and cpu_start is None:  # draining from here on
                    cpu_start = (time.perf_counter(), thread_cpu_seconds(proc.pid))
            cpu_end = (time.perf_counter(), thread_cpu_seconds(proc.pid))
        finally:
            rss = _rss_of(proc.pid)
            _stop(proc)
    finally:
        consumer.close()
    if len(stamps) < len(rows):
        raise BenchError(f"only {len(stamps)} of {len(rows)} scored records arrived in 15 "
                         f"minutes; see {log_path}")
    ts = np.sort(np.array(stamps, np.int64))
    # A batch is produced in one tight loop (stamps a millisecond apart at most); the next
    # comes only after it has been scored. The first gap ends the first batch.
    gaps = np.flatnonzero(np.diff(ts) > 3)
    cut = int(gaps[0]) + 1 if len(gaps) else 0
    timed = len(ts) - cut
    seconds = max(int(ts[-1]) - int(ts[max(cut - 1, 0)]), 1) / 1000
    shares = {}
    if cpu_start is not None and cpu_end[0] > cpu_start[0]:
        wall = cpu_end[0] - cpu_start[0]
        shares = {name: round((t - cpu_start[1].get(name, 0.0)) / wall, 3)
                  for name, t in cpu_end[1].items()}
    return {"records": len(rows), "warm_up_records": len(warm_up), "timed_records": timed,
            "seconds": seconds, "e2e_rps": timed / seconds, "processor_rss_mb": rss,
            "thread_cpu_share": shares}


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads, summed by kind: TensorFlow's pools (tf_*),
    librdkafka's (rdk:*), and the rest (the Python threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = collections.defaultdict(float)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        kind = ("model (tf_*)" if name.startswith("tf_") else
                "kafka client (rdk:*)" if name.startswith("rdk:") else "python")
        out[kind] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return dict(out)


def latency(settings: Settings, warm_up: list[tuple[str, int, float]],
            rows: list[tuple[str, int, float]], rate: float, log_path: Path,
            extra_env: dict[str, str]) -> dict[str, float]:
    """Offer `rate` records/s; time produce -> scored record readable, per record.

    `warm_up` (unpaced, unmeasured) fills every key's window first, so the measured
    records all go through the model.
    """
    consumer = _scored_consumer(settings)
    proc = _processor(settings, log_path, extra_env)
    sent_at: dict[bytes, collections.deque[float]] = collections.defaultdict(
        collections.deque)
    lat: list[float] = []
    try:
        _wait_ready(log_path, proc)
        _produce(settings, warm_up)
        _drain(consumer, len(warm_up), proc, log_path)
        producer = threading.Thread(target=_produce, args=(settings, rows, rate, sent_at))
        producer.start()
        deadline = time.perf_counter() + len(rows) / rate + 120
        # Every input is valid, so each key's scored records arrive in its input order:
        # the i-th scored record of a key answers the key's i-th input (no parsing needed).
        while len(lat) < len(rows) and time.perf_counter() < deadline:
            _alive(proc, log_path)
            first = consumer.poll(0.05)  # returns on the first record; consume(n, t)
            if first is None:  # would wait for n records or t, inflating what it measures
                continue
            for m in [first, *consumer.consume(5000, 0)]:
                key = m.key()
                if m.error() or key is None:
                    continue
                now = time.time()
                queue = sent_at.get(key)
                if queue:
                    lat.append((now - queue.popleft()) * 1000)
        producer.join()
    finally:
        consumer.close()
        _stop(proc)
    if not lat:
        raise BenchError(f"no scored record arrived at {rate:.0f} records/s; see {log_path}")
    a = np.array(lat)
    return {"offered_rps": rate, "measured": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def _drain(consumer: Consumer, n: int, proc: subprocess.Popen[bytes], log_path: Path,
           timeout_s: float = 300) -> None:
    deadline = time.perf_counter() + timeout_s
    seen = 0
    while seen < n:
        _alive(proc, log_path)
        if time.perf_counter() > deadline:
            raise BenchError(f"only {seen} of {n} warm-up records were scored")
        seen += sum(1 for m in consumer.consume(5000, 0.2) if not m.error())


def _wait_ready(log_path: Path, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the processor has loaded the model and owns its partitions."""
    start = log_path.stat().st_size if log_path.exists() else 0
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            _alive(proc, log_path)
        with log_path.open("rb") as fh:
            fh.seek(start)
            if b"partitions_assigned" in fh.read():
                time.sleep(1.0)  # restore runs right after assignment
                return
        time.sleep(0.2)
    raise BenchError(f"processor not ready after 120 s; see {log_path}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_processor(proc)


def _rss_of(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


# -- memory ------------------------------------------------------------------------------

def memory_per_key(version_dir: Path, key_counts: tuple[int, ...]) -> dict[str, Any]:
    """Resident memory of a process holding the model and N keys of full windows."""
    results = {}
    for n in key_counts:
        code = (
            "import sys, numpy as np\n"
            "from pathlib import Path\n"
            "from processor.model_store import load_version\n"
            "from processor.engine import Engine\n"
            "from processor.bench import current_rss_mb\n"
            "from processor.calibration import KeyScoreState\n"
            "from processor.windows import KeyState\n"
            f"m = load_version(Path({str(version_dir)!r}))\n"
            "e = Engine(m)\n"
            "before = current_rss_mb()\n"
            "full = np.ones(m.history, np.float32)\n"
            "scores = KeyScoreState.empty(e.scores.rule)\n"
            f"for i in range({n}):\n"
            "    e.put_key(f'key-{i:07d}', KeyState(full, m.history, 1, i % 4), scores)\n"
            "print(before, current_rss_mb(), len(e.windows))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
        results[str(n)] = {"rss_before_mb": float(out[0]), "rss_after_mb": float(out[1]),
                           "keys": int(out[2])}
    lo, hi = min(key_counts), max(key_counts)
    grow = results[str(hi)]["rss_after_mb"] - results[str(lo)]["rss_after_mb"]
    return {"by_keys": results, "bytes_per_key": grow * 2**20 / (hi - lo)}


def current_rss_mb() -> float:
    return _rss_of(os.getpid())


# -- command -----------------------------------------------------------------------------

def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.ab and not args.drains:
        raise BenchError("--ab compares drains: give --drains too")
    if len(set(args.memory_keys)) < 2:
        raise BenchError("--memory-keys needs at least two different key counts")
    if Path(args.out).is_dir():  # found now, not after minutes of measuring
        raise BenchError(f"--out {args.out} is a directory; name the JSON file to write")
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.external_broker:
        from processor.localbroker import start

        settings = settings.model_copy(update={"bootstrap_servers": start()})
    store = out_dir / "models"
    # never reuse a model of another size
    model_name = f"bench-w{args.window}-u{args.units}-season-{args.season}"
    version_dir = bench_model(store, model_name, args.window, args.units, args.season)
    from processor.model_store import read_metadata
    from processor.windows import input_width

    md = read_metadata(version_dir)
    history = input_width(md.window, md.season, md.steps) + md.steps - 1
    run_id = uuid.uuid4().hex[:8]
    results: dict[str, Any] = {"command": shlex.join(["anomaly", "bench", *sys.argv[2:]]),
                               "machine": machine(), "model": str(version_dir.name),
                               "window": args.window, "units": args.units,
                               "season": md.season, "values_per_key": history,
                               "keys": args.keys}
    extra = {"ANOMALY_BATCH_MAX_RECORDS": str(args.batch)}

    def fresh(tag: str) -> Settings:
        s = with_run_topics(settings, f"bench-{run_id}-{tag}").model_copy(update={
            "model_topic": f"bench-{run_id}.models", "model_store": store,
            "model_name": model_name, "partitions": args.partitions})
        ensure_topics(s)
        return s

    per_key = max(1, args.records // args.keys)
    rows = _series_rows(args.keys, history + per_key, 1_600_000_000_000)
    warm = args.keys * history  # rows are in time order: each key's first window
    if args.drains:
        return _drains(args, fresh, rows[:warm], rows[warm:], out_dir, extra)
    print("naive baseline ...", flush=True)
    results["naive_rps"] = naive_rps(version_dir, args.naive_seconds)
    print("inference alone ...", flush=True)
    inf = inference_rps(version_dir, args.inference_seconds)
    results["inference_rps"] = {str(k): v for k, v in inf.items()}
    best = max(inf, key=lambda k: inf[k])
    results["inference_rps_best"] = inf[best]
    results["inference_best_batch"] = best

    from processor.network import usable_cores

    # Inference alone runs here with TensorFlow's default pool (every usable core): the
    # model's best. The processor keeps a core for Kafka (its inference_threads setting).
    results["inference_alone_threads"] = usable_cores()
    results["processor_inference_threads"] = (settings.inference_threads
                                              or max(1, usable_cores() - 1))
    print(f"end to end: {len(rows) - warm} records over {args.keys} keys, after "
          f"{warm} that fill the windows ...", flush=True)
    e2e = end_to_end(fresh("e2e"), rows[:warm], rows[warm:], out_dir / "processor-e2e.log",
                     extra)
    results["e2e"] = e2e
    results["e2e_rps"] = e2e["e2e_rps"]

    lat_rows = _series_rows(args.keys, history + max(1, int(
        args.latency_seconds * e2e["e2e_rps"]) // args.keys), 1_700_000_000_000)
    warm_up, lat_rows = lat_rows[:warm], lat_rows[warm:]
    results["latency"] = {}
    for share in (0.25, 0.5, 0.75):
        rate = share * e2e["e2e_rps"]
        n = int(rate * args.latency_seconds)
        print(f"latency at {share:.0%} load ({rate:.0f} records/s) ...", flush=True)
        results["latency"][f"{share:g}"] = latency(fresh(f"lat{int(share * 100)}"),
                                                   warm_up, lat_rows[:n], rate,
                                                   out_dir / "processor-latency.log", extra)
    results["latency_ms_p99_at_half_load"] = results["latency"]["0.5"]["p99_ms"]
    # The same half load without transactions: what exactly-once costs in latency.
    rate = 0.5 * e2e["e2e_rps"]
    print(f"latency at 50% load ({rate:.0f} records/s), at least once ...", flush=True)
    results["latency_at_least_once"] = {"0.5": latency(
        fresh("lat50alo"), warm_up, lat_rows[:int(rate * args.latency_seconds)], rate,
        out_dir / "processor-latency.log",
        {**extra, "ANOMALY_PROCESSING_GUARANTEE": "at_least_once"})}

    print("memory per key ...", flush=True)
    mem = memory_per_key(version_dir, tuple(args.memory_keys))
    results["memory"] = mem
    results["bytes_per_key"] = mem["bytes_per_key"]
    results["peak_rss_mb_bench_process"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


def _drains(args: argparse.Namespace, fresh: Callable[[str], Settings],
            warm_up: list[tuple[str, int, float]],
            rows: list[tuple[str, int, float]], out_dir: Path, extra: dict[str, str]) -> int:
    """Only the end-to-end drain, repeated; with --ab, alternating with a changed setting,
    so two variants are compared on the same machine minutes apart (runs here vary more
    between minutes than between variants)."""
    variants: list[tuple[str, dict[str, str]]] = [("as set", {})]
    if args.ab:
        name, _, value = args.ab.partition("=")
        variants.append((args.ab, {name: value}))
    rates: dict[str, list[float]] = {label: [] for label, _ in variants}
    for i in range(args.drains):
        for v, (label, env) in enumerate(variants):
            e2e = end_to_end(fresh(f"drain{i}-{v}"), warm_up, rows,
                             out_dir / "processor-drains.log", {**extra, **env})
            rates[label].append(e2e["e2e_rps"])
            shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(e2e["thread_cpu_share"].items()))
            print(f"drain {i + 1} [{label}]: {e2e['e2e_rps']:,.0f} records/s; "
                  f"processor threads on a CPU: {shares}", flush=True)
    for label, r in rates.items():
        print(f"{label}: mean {np.mean(r):,.0f}, min {min(r):,.0f}, max {max(r):,.0f} "
              f"records/s over {len(r)} drains")
    if args.ab:
        base, other = rates["as set"], rates[args.ab]
        wins = sum(a > b for a, b in zip(base, other, strict=True))
        print(f"as set faster than {args.ab} in {wins} of {len(base)} pairs; mean ratio "
              f"{np.mean(base) / np.mean(other):.3f}")
    return 0


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; model window "
          f"{r['window']}, season {r.get('season', 0)}, {r['units']} units; "
          f"{r.get('values_per_key', r['window'])} values per key")
    rows = [("naive model.predict per record", f"{r['naive_rps']:.1f} records/s")]
    for size, rps in r["inference_rps"].items():
        rows.append((f"inference alone, batch {size}", f"{rps:,.0f} records/s"))
    e2e = r["e2e"]
    rows += [
        ("end to end through Kafka", f"{e2e['e2e_rps']:,.0f} records/s "
         f"({e2e['records']} records, {r['keys']} keys)"),
        ("  as share of best inference", f"{e2e['e2e_rps'] / r['inference_rps_best']:.0%}"),
        ("  as multiple of naive", f"{e2e['e2e_rps'] / r['naive_rps']:,.0f}x"),
    ]
    for share, lat in r["latency"].items():
        rows.append((f"latency at {float(share):.0%} load ({lat['offered_rps']:.0f}/s)",
                     f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
                     f"max {lat['max_ms']:.1f} ms"))
    for share, lat in r.get("latency_at_least_once", {}).items():
        rows.append((f"  same at {float(share):.0%}, at least once",
                     f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
                     f"max {lat['max_ms']:.1f} ms"))
    for n, mem in r["memory"]["by_keys"].items():
        rows.append((f"resident memory, {int(n):,} keys", f"{mem['rss_after_mb']:.0f} MB"))
    rows.append(("memory per key (full window, score history)",
                 f"{r['bytes_per_key']:.0f} bytes"))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
