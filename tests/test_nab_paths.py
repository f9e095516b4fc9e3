"""One NAB series through the real broker scores exactly as the offline evaluation does."""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer

from processor.calibration import ScoreColumns, nab_score
from processor.config import Settings
from processor.dataset import Series
from processor.evaluate import EvalConfig, _train, file_errors
from processor.model_store import read_metadata, save_version
from processor.nab.corpus import load_corpus
from processor.nab.scoring import probation_length
from processor.stream.app import Processor
from processor.stream.clients import ensure_topics
from processor.stream.model_topic import announce, announcement_for
from schemas.records import ScoredRecord
from tests.nab_data import NAB_DIR

pytestmark = [pytest.mark.broker, pytest.mark.slow]

NAME = "artificialWithAnomaly/art_daily_jumpsup.csv"


def test_stream_and_offline_evaluation_agree(kafka_bootstrap, tmp_path):
    cf = load_corpus(NAB_DIR, [NAME])[NAME]
    cfg = EvalConfig(window=16, units=8, epochs=2, retrain="none")
    ts = cf.timestamps.astype("datetime64[ms]").astype(np.int64)
    n = len(cf.values)
    model = _train(Series("s", ts, cf.values.astype(np.float64)).slice(0, probation_length(n)),
                   cfg, 16, cfg.season)
    assert model.metadata.season == 288  # the default: it reads the day before too
    offline = file_errors(cf, cfg, first_model=model)

    run = uuid.uuid4().hex[:8]
    s = Settings(bootstrap_servers=kafka_bootstrap, input_topic=f"in-{run}",
                 scored_topic=f"sc-{run}", alert_topic=f"al-{run}", dead_letter_topic=f"dl-{run}",
                 model_topic=f"mo-{run}", group_id=f"g-{run}", partitions=1,
                 model_store=tmp_path / "store", model_name="nab", state_dir=tmp_path / "state")
    ensure_topics(s)
    meta = model.metadata.model_copy(update={"name": "nab"})
    path = save_version(s.model_store, meta, model.predictor.model)
    announce(s, announcement_for(read_metadata(path), path))

    stop = threading.Event()
    proc = Processor(s, stop)
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for t, v in zip(ts.tolist(), cf.values.tolist()):
            body = {"key": "s", "timestamp": t, "value": v}
            producer.produce(s.input_topic, json.dumps(body).encode(), key=b"s")
        assert producer.flush(30) == 0
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"r-{run}",
                             "auto.offset.reset": "earliest",
                             "isolation.level": "read_committed"})
        consumer.subscribe([s.scored_topic])
        got: list[ScoredRecord] = []
        deadline = time.monotonic() + 180
        while len(got) < n and time.monotonic() < deadline:
            got += [ScoredRecord.model_validate_json(m.value())
                    for m in consumer.consume(1000, 0.5) if not m.error()]
        consumer.close()
    finally:
        stop.set()
        thread.join(60)
    assert len(got) == n  # this file has no out-of-order rows

    profile = model.metadata.profiles["s"]
    streamed = np.full(n, np.nan)
    score = np.full(n, np.nan)
    peak = np.zeros(n, bool)
    alert = np.zeros(n, bool)
    for r in got:
        if r.error is not None:
            streamed[r.source_offset] = r.error / profile.scale_std
        if r.anomaly_score is not None:
            score[r.source_offset] = r.anomaly_score
        peak[r.source_offset] = r.peak
        alert[r.source_offset] = r.alert
    np.testing.assert_array_equal(np.isnan(streamed), np.isnan(offline.error))
    np.testing.assert_allclose(streamed, offline.error, rtol=1e-12, equal_nan=True)
    # The anomaly scores, peaks, alerts and so NAB's per-row scores are the offline ones.
    assert offline.score is not None and offline.peak is not None
    np.testing.assert_array_equal(score, offline.score)
    np.testing.assert_array_equal(peak, offline.peak)
    np.testing.assert_array_equal(alert, offline.alert)
    np.testing.assert_array_equal(nab_score(ScoreColumns(score, peak, alert)),
                                  offline.nab_scores())
    assert peak.sum() > 3 and alert.sum() >= 1 and np.isfinite(score).sum() > n // 2
