"""Settings: environment and flags, redaction of credentials, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from processor.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_credentials_are_masked_whatever_librdkafka_calls_them():
    s = Settings(kafka_config={"sasl.password": "p1", "ssl.key.password": "p2",
                               "sasl.oauthbearer.config": "clientSecret=p3",
                               "sasl.oauthbearer.client.secret": "p4",
                               "ssl.keystore.password": "p5", "security.protocol": "SASL_SSL"})
    text = json.dumps(s.secrets_redacted())
    for secret in ("p1", "p2", "p3", "p4", "p5"):
        assert secret not in text
    assert "SASL_SSL" in text


def test_flag_beats_environment(monkeypatch):
    from processor.cli import build_parser
    from processor.config import settings_from_args

    monkeypatch.setenv("ANOMALY_HTTP_PORT", "9000")
    args = build_parser().parse_args(["run", "--http-port", "9100", "--idle-evict-s", "60"])
    s = settings_from_args(args)
    assert (s.http_port, s.idle_evict_s) == (9100, 60.0)


def test_malformed_kafka_config_is_one_line(tmp_path):
    env = {"ANOMALY_KAFKA_CONFIG": "{not json", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "processor.cli", "versions",
                          "--model-store", str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "kafka_config" in out.stderr


@pytest.mark.parametrize(("value", "message"), [
    ("{not json", "not valid JSON: Expecting property name"),
    ('{"linger.ms": [1]}', "'linger.ms': librdkafka takes a string, number or boolean"),
])
def test_bad_kafka_config_in_the_environment_says_what_is_wrong(monkeypatch, value, message):
    monkeypatch.setenv("ANOMALY_KAFKA_CONFIG", value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_numbers_in_kafka_config_are_librdkafka_values():
    s = Settings(kafka_config='{"linger.ms": 5, "enable.idempotence": true}')
    assert s.kafka_config == {"linger.ms": 5, "enable.idempotence": True}


@pytest.mark.parametrize("argv", [
    ["run", "--batch-time-budget-s", "inf"],
    ["run", "--http-port", "99999"],
    ["run", "--log-level", "BOGUS"],
    ["train", "--csv", "x.csv", "--rows", "nan"],
    ["bench", "--out", "."],
    ["bench", "--drains", "0"],
    ["bench", "--drains", "1", "--ab", "ANOMALY_BOGUS=1"],
    ["bench", "--drains", "1", "--ab", "inference_priority=false"],
    ["bench", "--drains", "1", "--ab", "ANOMALY_INFERENCE_PRIORITY=maybe"],
    ["bench", "--ab", "ANOMALY_INFERENCE_PRIORITY=false"],
    # Checked before any broker is started or topics created (this one is unreachable).
    ["demo", "--csv", "missing.csv", "--external-broker", "--bootstrap-servers", "127.0.0.1:1"],
])
def test_bad_values_are_one_line_errors_before_any_work(argv, tmp_path):
    out = subprocess.run([sys.executable, "-m", "processor.cli", *argv], cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    # One error line (argparse prints its usage above it).
    assert out.stderr.splitlines()[-1].startswith(f"anomaly {argv[0]}: error: "), out.stderr


def test_kafka_config_tunes_clients_but_cannot_weaken_the_guarantees():
    from processor.stream.clients import consumer_config, producer_config

    s = Settings(kafka_config={"linger.ms": 50, "compression.type": "zstd", "acks": "1",
                               "enable.idempotence": False, "auto.offset.reset": "latest",
                               "enable.auto.commit": True, "isolation.level": "read_uncommitted"})
    p, c = producer_config(s), consumer_config(s)
    assert (p["linger.ms"], p["compression.type"]) == (50, "zstd")
    assert (p["acks"], p["enable.idempotence"]) == ("all", True)
    assert c["auto.offset.reset"] == "latest"
    assert (c["enable.auto.commit"], c["isolation.level"]) == (False, "read_committed")


def test_demo_names_its_own_flag_for_a_bad_row_count(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,2\n")
    out = subprocess.run([sys.executable, "-m", "processor.cli", "demo", "--csv", str(csv),
                          "--train-rows", "1.5", "--external-broker",
                          "--bootstrap-servers", "127.0.0.1:1"], cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("anomaly demo: error: --train-rows 1.5")
