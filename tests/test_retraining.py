"""Scheduled retraining on the real broker: champion and challenger, --force, rollback."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Producer

from processor.cli import main
from processor.config import Settings
from processor.dataset import read_csv
from processor.model_store import list_versions
from processor.stream.clients import ensure_topics
from processor.stream.model_topic import ModelWatcher
from schemas.records import ms_to_datetime
from tests.nab_data import MACHINE_TEMP

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def settings(kafka_bootstrap, tmp_path, monkeypatch):
    run = uuid.uuid4().hex[:8]
    s = Settings(bootstrap_servers=kafka_bootstrap, input_topic=f"in-{run}",
                 scored_topic=f"sc-{run}", alert_topic=f"al-{run}",
                 dead_letter_topic=f"dl-{run}", model_topic=f"mo-{run}", group_id=f"g-{run}",
                 partitions=2, model_store=tmp_path / "store", model_name="m")
    ensure_topics(s)
    for name, value in {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                        "ANOMALY_INPUT_TOPIC": s.input_topic,
                        "ANOMALY_MODEL_TOPIC": s.model_topic, "ANOMALY_GROUP_ID": s.group_id,
                        "ANOMALY_MODEL_STORE": str(s.model_store),
                        "ANOMALY_MODEL_NAME": "m", "ANOMALY_LOG_LEVEL": "WARNING"}.items():
        monkeypatch.setenv(name, value)
    series = read_csv(MACHINE_TEMP).slice(0, 3000)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for key in ("a", "b"):
        for ts, v in zip(series.timestamps.tolist(), series.values.tolist()):
            body = {"key": key, "timestamp": ms_to_datetime(ts).isoformat(), "value": v}
            p.produce(s.input_topic, json.dumps(body).encode(), key=key.encode())
    assert p.flush(30) == 0
    return s


def announced(settings: Settings) -> str | None:
    watcher = ModelWatcher(settings)
    try:
        ann = watcher.catch_up()
    finally:
        watcher.close()
    return None if ann is None else ann.version


def train(*flags: str) -> int:
    return main(["train", "--from-topic", "--since-hours", "1", "--window", "16",
                 "--epochs", "1", *flags])


def test_better_version_is_published_and_worse_refused(settings, capsys):
    assert train("--units", "1", "--seed", "1") == 0  # no champion yet: published
    weak = announced(settings)
    assert weak is not None

    assert train("--units", "24", "--epochs", "6") == 0
    out = capsys.readouterr().out
    strong = announced(settings)
    assert strong not in (None, weak), out
    assert "not worse" in out

    versions_before = list_versions(settings.model_store, "m")
    assert train("--units", "1", "--seed", "2") == 0
    out = capsys.readouterr().out
    assert "not published" in out and "worse" in out
    assert announced(settings) == strong
    assert list_versions(settings.model_store, "m") == versions_before

    assert train("--units", "1", "--seed", "2", "--force") == 0
    forced = announced(settings)
    assert forced not in (weak, strong)
    assert "published anyway" in capsys.readouterr().out

    assert main(["rollback", strong]) == 0
    assert announced(settings) == strong

    assert main(["versions"]) == 0
    listing = capsys.readouterr().out
    assert strong in listing and "challenger_mse" in listing
