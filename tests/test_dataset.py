import json

import numpy as np
import pytest

from processor.dataset import (
    DataError,
    in_order_mask,
    keep_in_order,
    label_rows,
    read_csv,
    read_windows,
)


def write(tmp_path, text, name="s.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_nab_style_csv_as_utc(tmp_path):
    s = read_csv(write(tmp_path, "timestamp,value\n2014-01-01 00:00:00,1.5\n"
                                 "2014-01-01 00:05:00,2\n"))
    assert s.key == "s"
    assert s.timestamps.tolist() == [1388534400000, 1388534700000]
    assert s.values.tolist() == [1.5, 2.0]
    assert s.labels is None


@pytest.mark.parametrize("text, needle", [
    ("time,val\n1,2\n", "missing column"),
    ("timestamp,value\n", "no rows"),
    ("timestamp,value\n2014-01-01,abc\n", ":2: value 'abc'"),
    ("timestamp,value\n2014-01-01,1\nnot a time,2\n", ":3: timestamp"),
])
def test_bad_csv_gives_a_located_error(tmp_path, text, needle):
    with pytest.raises(DataError, match=needle):
        read_csv(write(tmp_path, text))


def test_windows_from_nab_dict_and_plain_list(tmp_path):
    nab = write(tmp_path, json.dumps({"cat/s.csv": [["2014-01-01 00:00:00.000000",
                                                     "2014-01-01 00:05:00.000000"]]}), "w.json")
    w = read_windows(nab, tmp_path / "s.csv")
    assert w == [(1388534400000, 1388534700000)]
    plain = write(tmp_path, json.dumps([["2014-01-01T00:00:00Z", "2014-01-01T00:05:00Z"]]),
                  "p.json")
    assert read_windows(plain) == w
    assert label_rows(np.array([1388534400000 - 1, 1388534400000, 1388534700000]), w).tolist() \
        == [False, True, True]
    with pytest.raises(DataError, match="no windows"):
        read_windows(nab, tmp_path / "other.csv")


def test_out_of_order_rows_are_dropped_like_the_stream_does():
    ts = np.array([1, 2, 2, 3, 1, 4])
    assert in_order_mask(ts).tolist() == [True, True, False, True, False, True]
    from processor.dataset import Series
    s, dropped = keep_in_order(Series("k", ts, np.arange(6.0)))
    assert dropped == 2 and s.values.tolist() == [0.0, 1.0, 3.0, 5.0]


def test_numeric_timestamps_are_epoch_milliseconds(tmp_path):
    s = read_csv(write(tmp_path, "timestamp,value\n1388534400000,1\n1388534700000,2\n"))
    assert s.timestamps.tolist() == [1388534400000, 1388534700000]


def test_directories_and_binary_labels_give_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_csv(tmp_path)
    bad = tmp_path / "w.json"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="not UTF-8"):
        read_windows(bad, tmp_path / "s.csv")


def test_values_beyond_float32_are_refused_in_files(tmp_path):
    with pytest.raises(DataError, match=":3: value '1e\\+308'"):
        read_csv(write(tmp_path, "timestamp,value\n2014-01-01,1\n2014-01-02,1e308\n"))
