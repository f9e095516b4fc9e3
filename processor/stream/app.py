"""The stream processor: consume a batch, score it with one forward pass, emit, commit.

Delivery is at least once: a batch's offsets are committed only after every scored record,
alert and dead letter of that batch is acknowledged by the broker. If delivery fails the
processor stops without committing, and a restart reprocesses the batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from processor.config import Settings
from processor.engine import Engine
from processor.model_store import LoadedModel, ModelStoreError, latest_version, load_version
from processor.stream.clients import consumer_config, ensure_topics, producer_config
from processor.stream.codec import RawRecord, decode, encode, rejected_to_dead_letter
from processor.stream.model_topic import ModelWatcher
from schemas.records import DeadLetter, ModelAnnouncement

log = structlog.get_logger(__name__)


class DeliveryError(Exception):
    """Outputs were not acknowledged; offsets stay uncommitted so nothing is lost."""


@dataclass
class Counters:
    records_in: int = 0
    scored: int = 0
    alerts: int = 0
    dead_letters: int = 0
    batches: int = 0
    model_version: str | None = None
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)


class Processor:
    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.counters = Counters()
        self._delivery_errors: list[str] = []
        self._engine: Engine | None = None

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
        return model

    def _activate(self, model: LoadedModel) -> None:
        if self._engine is None:
            self._engine = Engine(model, self.settings.initial_key_capacity)
        else:
            self._engine.set_model(model)
        self.counters.model_version = model.version
        log.info("model_active", version=model.version, window=model.window,
                 keys=len(model.metadata.profiles), threshold=model.metadata.threshold)

    def _wait_for_model(self, watcher: ModelWatcher) -> bool:
        ann = watcher.catch_up()
        while not self.stop.is_set():
            model = self._load(ann)
            if model is not None:
                self._activate(model)
                return True
            log.info("waiting_for_model", store=str(self.settings.model_store),
                     topic=self.settings.model_topic)
            self.stop.wait(2.0)
            ann = watcher.poll() or ann
        return False

    # -- main loop ------------------------------------------------------------------
    def run(self) -> Counters:
        s = self.settings
        ensure_topics(s)
        watcher = ModelWatcher(s)
        try:
            if not self._wait_for_model(watcher):
                return self.counters
            producer = Producer(producer_config(s))
            consumer = Consumer(consumer_config(s))
            consumer.subscribe([s.input_topic], on_assign=_log_assign, on_revoke=_log_revoke)
            try:
                self._loop(consumer, producer, watcher)
            finally:
                producer.flush(30)
                consumer.close()
        finally:
            watcher.close()
        log.info("processor_stopped", **self._summary())
        return self.counters

    def _loop(self, consumer: Consumer, producer: Producer, watcher: ModelWatcher) -> None:
        s = self.settings
        last_report = time.monotonic()
        while not self.stop.is_set():
            ann = watcher.poll()
            if ann is not None and ann.version != self.counters.model_version:
                model = self._load(ann)
                if model is not None:
                    self._activate(model)
            messages = consumer.consume(num_messages=s.batch_max_records,
                                        timeout=s.batch_max_wait_s)
            records = [r for m in messages if (r := _raw(m)) is not None]
            if records:
                self._process(records, producer)
                self._commit(consumer, records)
            if time.monotonic() - last_report > 10:
                log.info("progress", **self._summary())
                last_report = time.monotonic()

    def _process(self, records: list[RawRecord], producer: Producer) -> None:
        assert self._engine is not None
        s = self.settings
        by_position = {(r.partition, r.offset): r for r in records}
        observations, dead = [], []
        for raw in records:
            item = decode(raw, s.max_message_bytes)
            if isinstance(item, DeadLetter):
                dead.append(item)
            else:
                observations.append(item)
        result = self._engine.process(observations)
        dead.extend(rejected_to_dead_letter(rej, by_position[(rej.observation.partition,
                                                              rej.observation.offset)])
                    for rej in result.rejected)
        alerts = result.alerts
        for rec in result.scored:
            self._produce(producer, s.scored_topic, rec.key, encode(rec))
        for alert in alerts:
            self._produce(producer, s.alert_topic, alert.key, encode(alert))
            log.info("alert", key=alert.key, timestamp=alert.timestamp.isoformat(),
                     value=alert.value, expected=alert.expected, log_pd=alert.log_pd)
        for d in dead:
            self._produce(producer, s.dead_letter_topic, None, encode(d))
            self.counters.dead_letters_by_reason[d.reason.value] = (
                self.counters.dead_letters_by_reason.get(d.reason.value, 0) + 1)
            log.warning("dead_letter", reason=d.reason.value, detail=d.detail,
                        partition=d.source_partition, offset=d.source_offset)
        remaining = producer.flush(60)
        if remaining or self._delivery_errors:
            raise DeliveryError(f"{remaining} outputs undelivered, errors: "
                                f"{self._delivery_errors[:3]}")
        c = self.counters
        c.records_in += len(records)
        c.scored += len(result.scored)
        c.alerts += len(alerts)
        c.dead_letters += len(dead)
        c.batches += 1

    def _produce(self, producer: Producer, topic: str, key: str | None, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value, key=None if key is None else key.encode(),
                                 on_delivery=self._on_delivery)
                return
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    def _commit(self, consumer: Consumer, records: list[RawRecord]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for r in records:
            next_offsets[(r.topic, r.partition)] = max(
                next_offsets.get((r.topic, r.partition), 0), r.offset + 1)
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
                        asynchronous=False)

    def _summary(self) -> dict[str, object]:
        c = self.counters
        return {"records_in": c.records_in, "scored": c.scored, "alerts": c.alerts,
                "dead_letters": c.dead_letters, "batches": c.batches,
                "model_version": c.model_version}


def _raw(msg: Message) -> RawRecord | None:
    err = msg.error()
    if err is not None:
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer_error", error=str(err))
        return None
    return RawRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                     msg.key(), msg.value())


def _log_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    log.info("partitions_assigned", partitions=[p.partition for p in partitions])


def _log_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    log.info("partitions_revoked", partitions=[p.partition for p in partitions])
