"""The stream processor: consume a batch, score it with one forward pass, emit, commit.

Exactly once (the default): each batch is one Kafka transaction holding its scored
records, alerts, dead letters, the state of every key it touched (window and score
history, on the changelog) and
the consumed offsets (`send_offsets_to_transaction` with the consumer's group metadata,
which also fences zombie instances). If the transaction has to be aborted, the processor
rewinds to the committed offsets and restores the committed windows, so nothing is
emitted twice or scored against state that was never committed.

At least once: outputs and changelog are produced, flushed and acknowledged, then offsets
are committed (on the main thread, as soon as the batch is done); records a crash left
uncommitted are read again and, their windows restored already, dead-lettered as out of
order.

Pipelined, in three threads: the main thread polls, decodes and advances the windows
(`Engine.prepare`); a scoring thread runs the forward pass alone (`Engine.forward`); a
commit thread scores (`Engine.score`, which learns each key's score history, so batches
are scored in order), encodes, produces and commits in order, every
batch through the model by then in one transaction (so light load does not queue a
transaction per small batch). The forward pass releases the GIL, so the model works
while the other two run Python, and the model's thread needs the GIL only to start a
pass and to take its output (each wait for the GIL there idles the model). At
most `PIPELINE_DEPTH` full batches' worth of records are in flight (so a stalled commit
does not stop polling under light load, and a slow model's queue stays within a few
batch time budgets); rebalance callbacks and stop wait for them.
When a transaction aborts, the batches behind it skip their commit, and the consumer
rewinds to the committed offsets and the committed windows are restored, so nothing
scored on uncommitted state is ever emitted.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from processor.calibration import ScoreRule
from processor.config import Settings
from processor.engine import F64, STATUS_NAMES, BatchResult, Engine, Pending, to_alert
from processor.model_store import LoadedModel, ModelStoreError, latest_version, load_version
from processor.stream.changelog import decode_state, encode_state, encode_states, restore
from processor.stream.clients import consumer_config, ensure_topics, producer_config
from processor.stream.codec import (
    RawRecord,
    decode,
    encode,
    latest_accepted_ms,
    rejected_to_dead_letter,
)
from processor.stream.metrics import Health, HealthServer, Metrics
from processor.stream.model_topic import ModelWatcher
from processor.stream.scheduling import (
    favour_calling_thread,
    favour_inference_pool,
    yield_to_inference,
)
from processor.stream.spill import SpillStore
from processor.windows import StateColumns
from schemas.records import DeadLetter, ModelAnnouncement

log = structlog.get_logger(__name__)

#: Seconds to keep retrying a retriable transactional call (broker briefly away).
RETRY_WINDOW_S = 120.0
#: Records in flight (scored or committing while the next batch is polled), in full
#: batches. Under load: one batch in the model, one committing. Under light load many
#: small batches fit: while a commit stalls, polling and scoring go on, and what was
#: scored meanwhile goes out together in the next transaction.
PIPELINE_DEPTH = 4
#: ... and at most this many batches, whatever their size.
MAX_BATCHES_IN_FLIGHT = 64


class DeliveryError(Exception):
    """Outputs were not acknowledged; offsets stay uncommitted so nothing is lost."""


@dataclass
class Counters:
    records_in: int = 0
    scored: int = 0
    alerts: int = 0
    dead_letters: int = 0
    batches: int = 0
    aborted_batches: int = 0
    restores: int = 0
    restored_keys: int = 0
    evicted_keys: int = 0
    model_version: str | None = None
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class Output:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None


@dataclass
class Batch:
    """One batch on its way through the pipeline."""

    records: list[RawRecord]
    pending: Pending
    other: list[Output]  # dead letters, known before scoring
    dead_letters: int
    last_offsets: dict[tuple[str, int], int]  # (topic, partition) -> last offset in it
    group_metadata: object = None  # the consumer's, for send_offsets_to_transaction
    started: float = 0.0
    scored: Future[None] | None = None  # the scoring thread's work on it
    prediction: F64 | None = None  # the forward pass's output, set by the scoring thread
    forward_seconds: float = 0.0
    result: BatchResult | None = None  # its scores, set by the commit thread
    taken: bool = False  # picked up by a commit (its own or an earlier batch's)
    outcome: Committed | None = None  # set once committed
    states: StateColumns | None = None  # the touched keys' windows after this batch


@dataclass(frozen=True)
class Committed:
    records: int
    scored: int
    alerts: int
    dead_letters: int
    windows: int
    forward_seconds: float
    offsets: list[TopicPartition]  # the batch's next offsets, committed with it


class Processor:
    def __init__(self, settings: Settings, stop: threading.Event | None = None,
                 model_hook: Callable[[LoadedModel], LoadedModel] | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.counters = Counters()
        self.assigned: set[int] = set()
        self._model_hook = model_hook or (lambda m: m)
        self._engine: Engine | None = None
        self._delivery_errors: list[str] = []
        self._seconds_per_record = 0.0
        self._eos = settings.processing_guarantee == "exactly_once"
        self._changelog = settings.changelog_topic
        self._spill: SpillStore | None = None
        self.metrics = Metrics()
        self.health = Health(stall_after_s=max(120.0, settings.batch_time_budget_s * 10))
        self.http_port: int | None = None
        self._lag_labels: set[str] = set()
        self._server: HealthServer | None = None
        self._consumer: Consumer | None = None
        self._inflight: deque[tuple[Future[Committed | None], int]] = deque()  # (commit, records)
        self._inflight_records = 0
        self._scoring: deque[Future[None]] = deque()  # submitted to the model, maybe done
        self._queued: deque[Batch] = deque()  # submitted, not yet taken by a commit
        self._queue_lock = threading.Lock()
        self._needs_rewind = False
        # Set by the commit thread when a batch did not commit: those behind it skip.
        self._abandon = threading.Event()
        self._last_commit = 0.0  # monotonic time the last transaction committed
        self._commit_interval_s = settings.commit_interval_ms / 1000

    # -- model versions -------------------------------------------------------------
    def _load(self, ann: ModelAnnouncement | None) -> LoadedModel | None:
        path: Path | None
        if ann is not None:
            path = Path(ann.artifact_uri)
            if not path.is_absolute() or not path.exists():
                path = self.settings.model_store / ann.name / ann.version
        else:
            path = latest_version(self.settings.model_store, self.settings.model_name)
        if path is None:
            return None
        try:
            model = load_version(path)
        except ModelStoreError as exc:
            log.error("model_load_failed", path=str(path), error=str(exc))
            return None
        if ann is not None and model.metadata.checksum != ann.checksum:
            log.error("model_checksum_differs_from_announcement", version=ann.version)
            return None
        return self._timed(self._model_hook(model))

    def _timed(self, model: LoadedModel) -> LoadedModel:
        """Observe every forward pass in the inference-time histogram."""
        inner, hist = model.predictor, self.metrics.inference_seconds

        class Timed:
            window = model.input_width

            def __call__(self, windows: Any) -> Any:
                started = time.perf_counter()
                try:
                    return inner(windows)
                finally:
                    hist.observe(time.perf_counter() - started)

        model.predictor = Timed()  # type: ignore[assignment]
        return model

    def _activate(self, model: LoadedModel) -> None:
        if self._engine is None:
            self._engine = Engine(model, self.settings.initial_key_capacity,
                                  self.settings.gap_reset_intervals,
                                  ScoreRule(alert_score=self.settings.alert_score))
        else:
            self._engine.set_model(model)
        self.counters.model_version = model.version
        self._freeze_heap()
        self._calibrate(model)  # TensorFlow's pool exists after this forward pass
        if self.settings.inference_priority:
            favour_inference_pool()
        self.metrics.set_model(model.version)
        self.health.model_loaded = True
        log.info("model_active", version=model.version, window=model.window,
                 keys=len(model.metadata.profiles), threshold=model.metadata.threshold)

    @staticmethod
    def _freeze_heap() -> None:
        """Exempt what is alive now (TensorFlow, the model) from garbage collection.

        They are millions of long-lived objects, and every full collection walks them
        all: a quarter-second stall of a batch now and then, from objects that never go.
        Unfreezing first lets the collection free a replaced model version.
        """
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _calibrate(self, model: LoadedModel) -> None:
        """Time one forward pass, so the first batches are sized for this model.

        Without it the first batches are capped blindly, and while windows fill (no
        forward pass to learn from) the cap would stay, throttling the whole stream.
        """
        n = max(1, min(256, self.settings.batch_max_records))
        probe = np.zeros((n, model.input_width), np.float32)
        model.predictor(probe)  # the first call may trace the graph
        started = time.perf_counter()
        model.predictor(probe)
        self._learn_cost((time.perf_counter() - started) / n)

    def _wait_for_model(self, watcher: ModelWatcher) -> bool:
        ann = watcher.catch_up()
        while not self.stop.is_set():
            model = self._load(ann)
            if model is not None:
                self._activate(model)
                return True
            self.health.beat()  # waiting for a first model is not a stalled loop
            store = self.settings.model_store / self.settings.model_name
            log.info("waiting_for_model", store=str(self.settings.model_store),
                     model_name=self.settings.model_name, topic=self.settings.model_topic,
                     **({} if store.is_dir() else
                        {"note": f"{store} does not exist: check model_store and "
                         "model_name, or train a version (anomaly train)"}))
            self.stop.wait(2.0)
            ann = watcher.poll() or ann
        return False

    # -- life cycle -----------------------------------------------------------------
    def run(self) -> Counters:
        s = self.settings
        log.info("processor_starting", guarantee=s.processing_guarantee,
                 instance_id=s.instance_id, settings=s.secrets_redacted())
        # Before any client or worker thread starts: they inherit the policy.
        yielded = s.inference_priority and yield_to_inference()
        self._start_http()
        try:
            return self._run()
        finally:
            if self._server is not None:
                self._server.stop()
            if yielded:  # the caller's thread as it was
                favour_calling_thread()

    def _start_http(self) -> None:
        port = self.settings.http_port
        if port is None or port < 0:
            return
        try:
            self._server = HealthServer(port, self.metrics, self.health)
        except OSError as exc:
            log.error("http_endpoint_unavailable", port=port, error=str(exc))
            return
        self._server.start()
        self.http_port = self._server.port
        log.info("http_listening", port=self.http_port,
                 paths=["/healthz", "/readyz", "/metrics"])

    def _run(self) -> Counters:
        s = self.settings
        ensure_topics(s)
        watcher = ModelWatcher(s)
        try:
            if not self._wait_for_model(watcher):
                log.info("processor_stopped", **self._summary())
                return self.counters
            self._spill = SpillStore(s.state_dir / f"{s.group_id}-{s.instance_id}.sqlite")
            producer = Producer(self._producer_config())
            if self._eos:
                self._retrying(lambda: producer.init_transactions(30))
            consumer = Consumer(self._consumer_config())
            self._consumer = consumer
            consumer.subscribe([s.input_topic], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
            try:
                self._loop(consumer, producer, watcher)
            finally:
                if not self._eos:
                    producer.flush(30)
                consumer.close()
                self._spill.close()
        finally:
            watcher.close()
        log.info("processor_stopped", **self._summary())
        return self.counters

    def _producer_config(self) -> dict[str, Any]:
        s = self.settings
        if self._eos:
            # When every broker is unreachable librdkafka (2.x) re-bootstraps and
            # decommissions the broker it cached as group coordinator; a pending
            # send_offsets_to_transaction then waits on that dead handle forever, past its
            # timeout (librdkafka issues 5456, 5511), so a broker restart hung the processor.
            # Without re-bootstrap it reconnects to the brokers it knows.
            # While the coordinator writes the previous commit's markers it answers the
            # next transaction's requests with CONCURRENT_TRANSACTIONS; librdkafka retries
            # after retry.backoff.ms (100 ms, growing to 1 s): short retries cut a stall
            # of 100 ms or more to a few ms. kafka_config wins over all three.
            return {"metadata.recovery.strategy": "none", "retry.backoff.ms": 5,
                    "retry.backoff.max.ms": 20, **producer_config(s, **{
                "transactional.id": f"{s.group_id}-{s.instance_id}",
                "transaction.timeout.ms": s.transaction_timeout_ms})}
        return producer_config(s)

    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        extra: dict[str, Any] = {"session.timeout.ms": s.session_timeout_ms,
                                 "max.poll.interval.ms": s.max_poll_interval_ms}
        if s.static_membership:
            extra["group.instance.id"] = s.instance_id
        return consumer_config(s, **extra)

    # -- rebalances -----------------------------------------------------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Restore the windows of newly assigned partitions before any of their records."""
        self._settle()
        new = {tp.partition for tp in partitions}
        log.info("partitions_assigned", partitions=sorted(new))
        self._restore(new)
        self.assigned |= new
        self.health.assigned = bool(self.assigned)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The batch in flight commits (or aborts) before its partitions are given up.
        self._settle()
        gone = {tp.partition for tp in partitions}
        log.info("partitions_revoked", partitions=sorted(gone))
        self._forget(gone)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Fenced by now: what is in flight cannot commit, and is redone by the new owner.
        self._abandon.set()
        self._settle()
        gone = {tp.partition for tp in partitions}
        log.warning("partitions_lost", partitions=sorted(gone))
        self._forget(gone)

    def _forget(self, partitions: set[int]) -> None:
        assert self._engine is not None and self._spill is not None
        dropped = self._engine.drop_partitions(partitions)
        self._spill.drop_partitions(partitions)
        self.assigned -= partitions
        self.health.assigned = bool(self.assigned)
        for label in {str(p) for p in partitions} & self._lag_labels:
            self.metrics.consumer_lag.remove(label)
            self._lag_labels.discard(label)
        log.info("state_dropped", partitions=sorted(partitions), keys=dropped)

    def _restore(self, partitions: set[int]) -> None:
        assert self._engine is not None and self._spill is not None
        self._engine.drop_partitions(partitions)
        self._spill.drop_partitions(partitions)
        self.health.restored = False
        stats = restore(self.settings, partitions, self._engine, time.monotonic(),
                        on_progress=self.health.beat)
        self.metrics.restore_seconds.observe(stats.seconds)
        self.health.restored = True
        self.counters.restores += 1
        self.counters.restored_keys += stats.keys

    # -- main loop ------------------------------------------------------------------
    def _loop(self, consumer: Consumer, producer: Producer, watcher: ModelWatcher) -> None:
        s = self.settings
        last_report = last_evict = time.monotonic()
        last_lag = 0.0
        favour = favour_calling_thread if s.inference_priority else None
        with ThreadPoolExecutor(1, thread_name_prefix="score", initializer=favour) as scorer, \
                ThreadPoolExecutor(1, thread_name_prefix="commit") as committer:
            while not self.stop.is_set():
                self.health.beat()
                if time.monotonic() - last_lag > 5:
                    self._update_lag(consumer)
                    last_lag = time.monotonic()
                ann = watcher.poll()
                if ann is not None and ann.version != self.counters.model_version:
                    model = self._load(ann)
                    if model is not None:
                        self._activate(model)
                if s.idle_evict_s and time.monotonic() - last_evict > min(s.idle_evict_s, 10):
                    self._evict_idle()
                    last_evict = time.monotonic()
                messages = self._next_batch(consumer)  # rebalance callbacks settle
                if self._needs_rewind:  # what was polled since the aborted batch is redone
                    self._rewind(consumer)
                    continue
                records = [r for m in messages if (r := _raw(m)) is not None]
                if records:
                    batch = self._prepare(records, consumer)
                    batch.scored = scored = scorer.submit(self._forward, batch)
                    with self._queue_lock:
                        self._queued.append(batch)
                    self._inflight.append((committer.submit(self._commit, producer, batch),
                                           len(records)))
                    self._inflight_records += len(records)
                    while (len(self._inflight) > MAX_BATCHES_IN_FLIGHT
                           or self._inflight_records > PIPELINE_DEPTH * self._batch_limit()):
                        self._settle_oldest()
                    self._limit_scoring_queue(scored)
                # Committed batches are counted (and, at least once, their offsets
                # committed) as soon as they are done, also when no input comes.
                while self._inflight and self._inflight[0][0].done():
                    self._settle_oldest()
                if self._needs_rewind:
                    self._rewind(consumer)
                if time.monotonic() - last_report > 10:
                    log.info("progress", **self._summary())
                    last_report = time.monotonic()
            self._settle()

    def _next_batch(self, consumer: Consumer) -> list[Message]:
        """What has arrived, up to the batch limit; block only while nothing has.

        Waiting for a batch to fill would add the fill time to every record's latency.
        Under load records queue up while a batch is scored, so batches grow by themselves
        to what the load needs (and the limit keeps them within the time budget).
        """
        limit = self._batch_limit()
        messages: list[Message] = consumer.consume(num_messages=limit, timeout=0)
        if messages:
            return messages
        first = consumer.poll(self.settings.batch_max_wait_s)
        if first is None:
            return []
        return [first, *consumer.consume(num_messages=limit - 1, timeout=0)] if limit > 1 \
            else [first]

    def _observe_batch(self, batch: Batch) -> None:
        m, records = self.metrics, batch.records
        m.batch_size.observe(len(records))
        m.batch_seconds.observe(time.monotonic() - batch.started)
        for part, n in Tally(r.partition for r in records).items():
            m.records_in.labels(partition=str(part)).inc(n)
        oldest = min((r.timestamp_ms for r in records if r.timestamp_ms > 0), default=0)
        if oldest:
            m.delay_seconds.observe(max(time.time() - oldest / 1000, 0.0))
        if self._engine is not None:
            m.state_keys.set(len(self._engine.windows))

    def _update_lag(self, consumer: Consumer) -> None:
        """Records behind each assigned partition's end, fetched or not yet fetched.

        Watermarks come from the fetcher's cache; a partition not fetched yet costs one
        round trip (and its position is its committed offset, or the earliest).
        """
        if not self.assigned:
            return
        try:
            parts = [TopicPartition(self.settings.input_topic, p) for p in sorted(self.assigned)]
            positions = consumer.position(parts)
            unknown = [tp for tp in positions if tp.offset < 0]
            if unknown:  # not fetched yet: the committed offset is where it will start
                known = {tp.partition: tp for tp in positions if tp.offset >= 0}
                for tp in consumer.committed(unknown, timeout=5):
                    known[tp.partition] = tp
                positions = list(known.values())
            for tp in positions:
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0 or tp.offset < 0:
                    low, high = consumer.get_watermark_offsets(tp, cached=False, timeout=5)
                start = tp.offset if tp.offset >= 0 else low  # nothing committed: earliest
                if high >= 0:
                    self.metrics.consumer_lag.labels(partition=str(tp.partition)).set(
                        max(high - start, 0))
                    self._lag_labels.add(str(tp.partition))
        except KafkaException as exc:
            log.debug("lag_unavailable", error=str(exc))

    def _learn_cost(self, per_window: float) -> None:
        """Price every record as a window through the model: a batch of records that are
        still filling their windows costs next to nothing and must not size the next one.
        A slowdown counts at once and a speed-up gradually, so one slow batch shrinks the
        next instead of the third."""
        old = self._seconds_per_record
        self._seconds_per_record = (per_window if not old
                                    else max(per_window, 0.7 * old + 0.3 * per_window))

    def _batch_limit(self) -> int:
        """Cap the batch so scoring it fits the time budget (slow models stay in the group)."""
        s = self.settings
        if not self._seconds_per_record:
            return min(s.batch_max_records, 100)
        fits = int(s.batch_time_budget_s / self._seconds_per_record)
        return max(1, min(s.batch_max_records, fits))

    def _limit_scoring_queue(self, scored: Future[None]) -> None:
        """Keep at most one batch queued behind the one in the model: records arriving
        meanwhile make the next poll's batch bigger instead of another small forward pass.
        (Commits are not waited for here: a slow one does not stop polling and scoring.)"""
        self._scoring.append(scored)
        while self._scoring and self._scoring[0].done():
            self._scoring.popleft()
        if len(self._scoring) > 2:
            wait([self._scoring[0]])

    def _settle(self) -> None:
        """Wait for every batch in flight (before a rebalance is handled, and on stop)."""
        while self._inflight:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        """Count the oldest batch in flight when it committed, else mark a rewind.

        Re-raises what the scoring or commit thread raised (a fatal Kafka error).
        """
        future, records = self._inflight.popleft()
        self._inflight_records -= records
        done = future.result()
        if done is None:
            self._needs_rewind = True
            return
        if not self._eos:  # outputs acknowledged: now the offsets
            assert self._consumer is not None
            self._consumer.commit(offsets=done.offsets, asynchronous=False)
        c = self.counters
        c.records_in += done.records
        c.scored += done.scored
        c.alerts += done.alerts
        c.dead_letters += done.dead_letters
        c.batches += 1
        if done.windows:
            self._learn_cost(done.forward_seconds / done.windows)

    def _prepare(self, records: list[RawRecord], consumer: Consumer) -> Batch:
        """Decode and advance the windows (main thread, in arrival order); the dead
        letters and the touched keys' new windows (for the changelog)."""
        assert self._engine is not None
        s, started = self.settings, time.monotonic()
        observations, dead = [], []
        latest = latest_accepted_ms(s.max_future_s)
        for raw in records:
            item = decode(raw, s.max_message_bytes, latest)
            if isinstance(item, DeadLetter):
                dead.append(item)
            else:
                observations.append(item)
        self._unspill([o.key for o in observations])
        pending = self._engine.prepare(observations, now=started)
        if pending.rejected:
            by_position = {(r.partition, r.offset): r for r in records}
            dead.extend(rejected_to_dead_letter(rej, by_position[(rej.observation.partition,
                                                                  rej.observation.offset)])
                        for rej in pending.rejected)
        other: list[Output] = []
        for d in dead:
            other.append(Output(s.dead_letter_topic, None, encode(d)))
            self.counters.dead_letters_by_reason[d.reason.value] = (
                self.counters.dead_letters_by_reason.get(d.reason.value, 0) + 1)
            self.metrics.dead_letters.labels(reason=d.reason.value).inc()
            log.warning("dead_letter", reason=d.reason.value, detail=d.detail,
                        partition=d.source_partition, offset=d.source_offset)
        # The touched keys' windows now; their score histories join them once scored.
        states = self._engine.windows.snapshot(list(dict.fromkeys(o.key for o in observations)))
        metadata = consumer.consumer_group_metadata() if self._eos else None
        return Batch(records, pending, other, len(dead), _last_offsets(records), metadata,
                     started, states=states)

    def _forward(self, batch: Batch) -> None:
        """The forward pass (scoring thread): nothing else, so the model is kept busy."""
        started = time.perf_counter()
        batch.prediction = Engine.forward(batch.pending)
        batch.forward_seconds = time.perf_counter() - started

    # -- committing (on the commit thread) -------------------------------------------
    def _commit(self, producer: Producer, batch: Batch) -> Committed | None:
        """Commit `batch`, with every batch behind it that is scored already, in one
        transaction (so under light load commits do not queue up one per small batch).

        None: not committed (aborted, or a batch before it was), to be redone.
        """
        if batch.taken:  # it went out with an earlier batch's transaction
            return batch.outcome
        try:
            assert batch.scored is not None
            if not self._abandon.is_set():  # else no need to wait for its scores
                batch.scored.result()
            if self._eos:  # let the broker finish the previous commit's markers
                pause = self._last_commit + self._commit_interval_s - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            group = self._take_group(batch)
            if self._abandon.is_set() or not self._commit_group(producer, group):
                self._abandon.set()
                return None
        except BaseException:
            self._abandon.set()
            with self._queue_lock:
                if batch in self._queued:
                    self._queued.remove(batch)
            raise
        return batch.outcome

    def _take_group(self, batch: Batch) -> list[Batch]:
        with self._queue_lock:
            assert self._queued and self._queued[0] is batch, "commits run in order"
            group = [self._queued.popleft()]
            while self._queued:
                nxt = self._queued[0].scored
                if nxt is None or not nxt.done() or nxt.exception() is not None:
                    break
                group.append(self._queued.popleft())
            for b in group:
                b.taken = True
        return group

    def _commit_group(self, producer: Producer, group: list[Batch]) -> bool:
        s, now = self.settings, datetime.now(UTC)
        scored_keys: list[bytes] = []
        scored_values: list[bytes] = []
        other: list[Output] = []
        alerts: list[int] = []
        engine = self._engine
        assert engine is not None
        for batch in group:
            assert batch.prediction is not None and batch.states is not None
            batch.result = result = engine.score(batch.pending, batch.prediction)
            cols = result.columns
            n = 0
            for r in result.alerted():
                alert = to_alert(r, now)
                other.append(Output(s.alert_topic, alert.key.encode(), encode(alert)))
                n += 1
                log.info("alert", key=alert.key, observed_at=alert.timestamp.isoformat(),
                         value=alert.value, expected=alert.expected,
                         anomaly_score=alert.anomaly_score, partition=r.source_partition,
                         offset=r.source_offset)
            alerts.append(n)
            scored_keys.extend(key.encode() for key in cols.keys)
            scored_values.extend(cols.to_json())
            other.extend(batch.other)
            # Window after this batch (from `_prepare`) and score history after it (now).
            states = batch.states
            other.extend(
                Output(self._changelog, key.encode(), data, partition)
                for key, data, partition in zip(
                    states.keys, encode_states(states, engine.scores.states(states.keys)),
                    states.partition.tolist(), strict=True))
        if self._eos:
            last: dict[tuple[str, int], int] = {}
            for batch in group:  # in input order: later batches' offsets win
                last.update(batch.last_offsets)
            ok = self._commit_transaction(producer, _next_offsets(last),
                                          group[-1].group_metadata,
                                          scored_keys, scored_values, other)
        else:
            ok = self._deliver(producer, scored_keys, scored_values, other)
        if not ok:
            return False
        m = self.metrics
        for batch, n in zip(group, alerts, strict=True):
            assert batch.result is not None
            cols = batch.result.columns
            statuses, counts = np.unique(cols.status, return_counts=True)
            for st, c in zip(statuses.tolist(), counts.tolist(), strict=True):
                m.records_scored.labels(status=STATUS_NAMES[st]).inc(c)
            m.alerts.inc(n)
            self._observe_batch(batch)
            batch.outcome = Committed(len(batch.records), len(cols), n, batch.dead_letters,
                                      batch.pending.windows_to_score, batch.forward_seconds,
                                      _next_offsets(batch.last_offsets))
        return True

    def _commit_transaction(self, producer: Producer, offsets: list[TopicPartition],
                            group_metadata: object, scored_keys: list[bytes],
                            scored_values: list[bytes], other: list[Output]) -> bool:
        try:
            producer.begin_transaction()
            # No delivery callbacks: a message that fails makes commit_transaction fail.
            self._produce_all(producer, scored_keys, scored_values, other, None)
            self._retrying(lambda: producer.send_offsets_to_transaction(
                offsets, group_metadata, 30))
            self._retrying(lambda: producer.commit_transaction(30))
            self._last_commit = time.monotonic()
            return True
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal() or not err.txn_requires_abort():
                raise
            log.warning("transaction_aborted", error=str(err))
            self._retrying(lambda: producer.abort_transaction(30))
            self.counters.aborted_batches += 1
            self.metrics.aborted.inc()
            return False

    def _deliver(self, producer: Producer, scored_keys: list[bytes],
                 scored_values: list[bytes], other: list[Output]) -> bool:
        """At least once: produce and wait for every acknowledgement. The offsets are
        committed afterwards, on the main thread (`_settle_oldest`): a synchronous commit
        from this thread could wait seconds on the consumer polling in the other."""
        self._produce_all(producer, scored_keys, scored_values, other, self._on_delivery)
        while producer.flush(1.0) > 0:  # librdkafka retries until message.timeout.ms
            if self._delivery_errors:
                break
        if self._delivery_errors:
            raise DeliveryError(f"outputs not delivered: {self._delivery_errors[:3]}")
        return True

    def _rewind(self, consumer: Consumer) -> None:
        """After an abort: back to the committed offsets and the committed windows."""
        self._settle()  # the batches behind the aborted one skip their commit
        self._needs_rewind = False
        self._abandon.clear()
        with self._queue_lock:
            self._queued.clear()
        parts = [TopicPartition(self.settings.input_topic, p) for p in sorted(self.assigned)]
        if not parts:
            return
        committed = consumer.committed(parts, timeout=30)
        for tp in committed:
            consumer.seek(TopicPartition(tp.topic, tp.partition,
                                         tp.offset if tp.offset >= 0 else 0))
        self._restore(set(self.assigned))

    def _retrying(self, call: Callable[[], object]) -> None:
        deadline = time.monotonic() + RETRY_WINDOW_S
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if not err.retriable() or time.monotonic() > deadline:
                    raise
                log.warning("kafka_retry", error=str(err))
                time.sleep(0.5)

    def _produce_all(self, producer: Producer, scored_keys: list[bytes],
                     scored_values: list[bytes], other: list[Output],
                     on_delivery: Callable[[KafkaError | None, Message], None] | None) -> None:
        topic = self.settings.scored_topic
        produce = producer.produce
        for key, value in zip(scored_keys, scored_values, strict=True):
            try:
                produce(topic, value, key, on_delivery=on_delivery)
            except BufferError:
                self._produce(producer, Output(topic, key, value), on_delivery)
        for out in other:
            self._produce(producer, out, on_delivery)

    def _produce(self, producer: Producer, out: Output,
                 on_delivery: Callable[[KafkaError | None, Message], None] | None) -> None:
        kwargs: dict[str, Any] = {"key": out.key, "on_delivery": on_delivery}
        if out.partition is not None:
            kwargs["partition"] = out.partition
        while True:
            try:
                producer.produce(out.topic, out.value, **kwargs)
                return
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    # -- idle keys ------------------------------------------------------------------
    def _evict_idle(self) -> None:
        assert self._engine is not None and self._spill is not None
        engine = self._engine
        idle = engine.windows.idle_keys(time.monotonic() - self.settings.idle_evict_s)
        if not idle:
            return
        # Their last scores must be in the score histories spilled with them.
        self._settle()
        items = []
        for key in idle:
            state = engine.key_state(key)
            if state is not None:
                items.append((key, state[0].partition, encode_state(*state)))
        self._spill.put_many(items)
        engine.remove_keys(idle)
        self.counters.evicted_keys += len(idle)
        log.info("keys_evicted", keys=len(idle), in_memory=len(engine.windows))

    def _unspill(self, keys: list[str]) -> None:
        assert self._engine is not None and self._spill is not None
        engine = self._engine
        missing = [k for k in dict.fromkeys(keys) if k not in engine.windows]
        if missing and self.settings.idle_evict_s:
            now = time.monotonic()
            for key, data in self._spill.take_many(missing).items():
                engine.put_key(key, *decode_state(data), now=now)

    def _summary(self) -> dict[str, object]:
        c = self.counters
        return {"records_in": c.records_in, "scored": c.scored, "alerts": c.alerts,
                "dead_letters": c.dead_letters, "batches": c.batches,
                "aborted_batches": c.aborted_batches, "model_version": c.model_version,
                "keys_in_memory": len(self._engine.windows) if self._engine else 0}


def _last_offsets(records: list[RawRecord]) -> dict[tuple[str, int], int]:
    """The last offset of each partition (a partition's records come in offset order)."""
    return {(r.topic, r.partition): r.offset for r in records}


def _next_offsets(last: dict[tuple[str, int], int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def _raw(msg: Message) -> RawRecord | None:
    err = msg.error()
    if err is not None:
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer_error", error=str(err))
        return None
    return RawRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                     msg.key(), msg.value(), msg.timestamp()[1])
