import json

import pytest
from pydantic import ValidationError

from schemas.generate import SCHEMA_DIR, render
from schemas.records import InputRecord


def test_json_schema_files_match_the_models():
    rendered = render()
    on_disk = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.schema.json")}
    assert on_disk.keys() == rendered.keys(), "run: python -m schemas.generate"
    for name, text in rendered.items():
        assert json.loads(on_disk[name]) == json.loads(text), (
            f"{name} is stale; run: python -m schemas.generate")


@pytest.mark.parametrize("ts, ms", [
    (1388534400000, 1388534400000),
    ("2014-01-01T00:00:00Z", 1388534400000),
    ("2014-01-01T01:00:00+01:00", 1388534400000),
    (1388534400000.0, 1388534400000),
])
def test_timestamp_forms(ts, ms):
    assert InputRecord(key="a", timestamp=ts, value=1).timestamp == ms


@pytest.mark.parametrize("payload", [
    {"key": "a", "timestamp": "2014-01-01T00:00:00", "value": 1},  # no zone
    {"key": "a", "timestamp": "yesterday", "value": 1},
    {"key": "a", "timestamp": -5, "value": 1},  # before 1970
    {"key": "a", "timestamp": 10**16, "value": 1},  # far future (microseconds?)
    {"key": "a", "timestamp": True, "value": 1},
    {"key": "a", "timestamp": 1, "value": float("nan")},
    {"key": "a", "timestamp": 1, "value": float("inf")},
    {"key": "a", "timestamp": 1, "value": "12"},
    {"key": "", "timestamp": 1, "value": 1},
    {"key": "a", "timestamp": 1},
    {"key": "a", "timestamp": 1, "value": 1, "unit": "C"},  # extra fields are refused
])
def test_invalid_inputs_are_refused(payload):
    with pytest.raises(ValidationError):
        InputRecord.model_validate(payload)
