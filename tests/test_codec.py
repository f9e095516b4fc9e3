import base64

import pytest

from processor.engine import Observation
from processor.stream.codec import RawRecord, decode
from schemas.records import DeadLetter, DeadLetterReason


def raw(value, key=b"k1"):
    return RawRecord("in", 2, 41, key, value)


def test_valid_record_decodes():
    obs = decode(raw(b'{"key":"k1","timestamp":"2014-01-01T00:00:00Z","value":2.5}'), 10_000)
    assert obs == Observation("k1", 1388534400000, 2.5, 2, 41)


@pytest.mark.parametrize("value, key, reason", [
    (b"\xff\xfe", b"k1", DeadLetterReason.NOT_UTF8),
    (b"{not json", b"k1", DeadLetterReason.NOT_JSON),
    (b"[1, 2]", b"k1", DeadLetterReason.NOT_AN_OBJECT),
    (b'{"key":"k1","timestamp":1,"value":"x"}', b"k1", DeadLetterReason.INVALID_FIELD),
    (b'{"key":"k1","timestamp":1,"value":NaN}', b"k1", DeadLetterReason.INVALID_FIELD),
    (b'{"key":"k1","timestamp":1,"value":1e999}', b"k1", DeadLetterReason.INVALID_FIELD),
    (b'{"key":"k1","timestamp":1,"value":1}', b"other", DeadLetterReason.KEY_MISMATCH),
    (b'{"key":"k1","timestamp":1,"value":1}', None, DeadLetterReason.KEY_MISMATCH),
    (None, b"k1", DeadLetterReason.INVALID_FIELD),
    (b" " * 200 + b"{}", b"k1", DeadLetterReason.TOO_LARGE),
])
def test_bad_records_become_dead_letters_with_original_bytes(value, key, reason):
    out = decode(raw(value, key), max_bytes=100)
    assert isinstance(out, DeadLetter)
    assert out.reason == reason
    assert out.detail
    assert (out.source_topic, out.source_partition, out.source_offset) == ("in", 2, 41)
    if value is not None:
        assert base64.b64decode(out.original_value_b64) == value


def test_deeply_nested_json_is_a_dead_letter_not_a_crash():
    out = decode(raw(b"[" * 100_000 + b"]" * 100_000), max_bytes=10**6)
    assert isinstance(out, DeadLetter) and out.reason == DeadLetterReason.NOT_JSON


def test_values_beyond_float32_are_refused():
    out = decode(raw(b'{"key":"k1","timestamp":1,"value":1e308}'), 10_000)
    assert isinstance(out, DeadLetter) and out.reason == DeadLetterReason.INVALID_FIELD
    assert "value" in out.detail


def test_huge_record_is_cut_in_the_dead_letter_but_located():
    from processor.stream.codec import MAX_EMBEDDED_BYTES

    big = b"x" * (MAX_EMBEDDED_BYTES * 5)
    out = decode(raw(big), max_bytes=10**6)
    assert isinstance(out, DeadLetter) and out.reason == DeadLetterReason.TOO_LARGE
    assert out.original_truncated and out.original_size == len(big)
    assert base64.b64decode(out.original_value_b64) == big[:MAX_EMBEDDED_BYTES]
    assert (out.source_partition, out.source_offset) == (2, 41)


def test_non_utf8_kafka_key_is_a_key_mismatch():
    out = decode(raw(b'{"key":"k1","timestamp":1,"value":1}', key=b"\xff"), 10_000)
    assert isinstance(out, DeadLetter) and out.reason == DeadLetterReason.KEY_MISMATCH
    assert "UTF-8" in out.detail


def test_integer_too_long_for_python_is_a_dead_letter_not_a_crash():
    digits = b"9" * 5000
    for value in (b'{"key":"k1","timestamp":' + digits + b',"value":1.0}',
                  b'{"key":"k1","timestamp":1,"value":' + digits + b"}"):
        out = decode(raw(value), max_bytes=10_000)
        assert isinstance(out, DeadLetter)
        assert out.reason == DeadLetterReason.INVALID_FIELD
        assert "digits" in out.detail


def test_a_record_stamped_past_the_latest_accepted_time_is_dead_lettered():
    body = b'{"key":"k1","timestamp":"2199-01-01T00:00:00Z","value":1}'
    latest = 1_800_000_000_000  # 2027-01-15
    out = decode(raw(body), 10_000, latest_ms=latest)
    assert isinstance(out, DeadLetter) and out.reason == DeadLetterReason.FUTURE_TIMESTAMP
    assert "max_future_s" in out.detail and base64.b64decode(out.original_value_b64) == body
    ok = decode(raw(b'{"key":"k1","timestamp":1799999999999,"value":1}'), 10_000, latest)
    assert isinstance(ok, Observation) and ok.timestamp_ms == latest - 1
    assert isinstance(decode(raw(body), 10_000), Observation)  # no limit given: taken
