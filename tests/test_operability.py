"""Operating the processor: probes and metrics on a real broker; secrets stay out of logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from confluent_kafka import Producer

from processor.config import Settings
from processor.dataset import read_csv
from processor.model_store import read_metadata, save_version
from processor.stream.app import Processor
from processor.stream.clients import ensure_topics
from processor.stream.model_topic import announce, announcement_for
from processor.train import TrainConfig, train
from tests.nab_data import MACHINE_TEMP

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_probes_and_metrics_follow_the_processor(kafka_bootstrap, tmp_path):
    run = uuid.uuid4().hex[:8]
    s = Settings(bootstrap_servers=kafka_bootstrap, input_topic=f"in-{run}",
                 scored_topic=f"sc-{run}", alert_topic=f"al-{run}", dead_letter_topic=f"dl-{run}",
                 model_topic=f"mo-{run}", group_id=f"g-{run}", partitions=2,
                 model_store=tmp_path / "store", model_name="m", http_port=0,
                 state_dir=tmp_path / "state")
    ensure_topics(s)
    stop = threading.Event()
    proc = Processor(s, stop)
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while proc.http_port is None and time.monotonic() < deadline:
            time.sleep(0.1)
        port = proc.http_port
        assert port is not None
        # No model yet: alive, not ready.
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/readyz")[0] == 503

        series = read_csv(MACHINE_TEMP).slice(0, 2000)
        outcome = train([series], TrainConfig(name="m", window=16, units=8, epochs=1,
                                              season="none", verbose=0), "test")
        path = save_version(s.model_store, outcome.metadata, outcome.network)
        announce(s, announcement_for(read_metadata(path), path))
        deadline = time.monotonic() + 60
        while get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get(port, "/readyz")[0] == 200

        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for i, (t, v) in enumerate(zip(series.timestamps[:300].tolist(),
                                       series.values[:300].tolist())):
            key = f"k{i % 3}"
            producer.produce(s.input_topic, json.dumps(
                {"key": key, "timestamp": t, "value": v}).encode(), key=key.encode())
        producer.produce(s.input_topic, b"not json", key=b"k0")
        assert producer.flush(30) == 0
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = get(port, "/metrics")[1]
            if metric(text, "anomaly_records_in_total") >= 301:
                break
            time.sleep(0.3)
        assert metric(text, "anomaly_records_in_total") == 301
        assert metric(text, 'anomaly_records_scored_total{status="scored"}') > 0
        assert metric(text, 'anomaly_dead_letters_total{reason="not_json"}') == 1
        assert metric(text, "anomaly_batch_size_count") > 0
        assert metric(text, "anomaly_inference_seconds_count") > 0
        assert metric(text, "anomaly_state_keys") == 3
        assert f'anomaly_model_info{{version="{outcome.metadata.version}"}} 1.0' in text
        assert metric(text, "anomaly_ready") == 1
        deadline = time.monotonic() + 20
        while "anomaly_consumer_lag{" not in text and time.monotonic() < deadline:
            time.sleep(0.5)
            text = get(port, "/metrics")[1]
        assert metric(text, "anomaly_consumer_lag") == 0
    finally:
        stop.set()
        thread.join(60)


def test_secrets_never_reach_the_logs(kafka_bootstrap, tmp_path):
    secret = "s3cr3t-" + uuid.uuid4().hex
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "ANOMALY_KAFKA_CONFIG": json.dumps({"security.protocol": "SASL_PLAINTEXT",
                                               "sasl.mechanism": "PLAIN",
                                               "sasl.username": "svc",
                                               "sasl.password": secret}),
           "ANOMALY_MODEL_STORE": str(tmp_path), "ANOMALY_HTTP_PORT": "0",
           "ANOMALY_LOG_LEVEL": "DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", "processor.cli", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    text = out.decode(errors="replace")
    assert "sasl.password" in text or "processor_starting" in text or "error" in text, text
    assert secret not in text
