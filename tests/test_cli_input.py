"""Careless input on the command line: one line naming the problem, before any training,
and nothing written outside the folders given."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from processor.cli import main
from processor.dataset import DataError, Series, check_sorted, read_csv, writable_file
from processor.detect_job import file_name
from processor.train import TrainConfig, trainable


def series_csv(path: Path, n: int = 400, reverse: bool = False, label: str | None = None
               ) -> Path:
    start = np.datetime64("2014-01-01T00:00")
    rows = [f"{start + np.timedelta64(5 * i, 'm')},{np.sin(i / 10):.4f}" for i in range(n)]
    if reverse:
        rows.reverse()
    header = "timestamp,value"
    if label is not None:
        header += ",label"
        rows = [f"{r},{label if i == 3 else 0}" for i, r in enumerate(rows)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("label", ["yes", "2", "-1", ""])
def test_labels_other_than_0_or_1_are_refused_with_the_row(tmp_path: Path, label: str) -> None:
    with pytest.raises(DataError, match=r":5: label .* is not 0 or 1"):
        read_csv(series_csv(tmp_path / "s.csv", 10, label=label))


@pytest.mark.parametrize("label", ["1", "true", "True", "1.0"])
def test_labels_as_0_1_or_true_false_are_read(tmp_path: Path, label: str) -> None:
    s = read_csv(series_csv(tmp_path / "s.csv", 10, label=label))
    assert s.labels is not None and s.labels.tolist() == [i == 3 for i in range(10)]


def test_a_file_sorted_the_wrong_way_is_refused_not_shrunk(tmp_path: Path) -> None:
    s = read_csv(series_csv(tmp_path / "s.csv", 300, reverse=True))
    with pytest.raises(DataError, match=r"299 of 300 rows are not later.*sort the file"):
        check_sorted(s.timestamps, "s.csv")
    ok = read_csv(series_csv(tmp_path / "t.csv", 300))
    assert check_sorted(ok.timestamps, "t.csv") == 0


def test_an_unwritable_output_is_found_before_the_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        writable_file(tmp_path / "file" / "out.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="not a writable file"):
        writable_file(tmp_path / "dir.csv")
    assert writable_file(tmp_path / "a" / "b.csv").parent.is_dir()


@pytest.mark.parametrize("key", ["../../escaped", "a/b", "..", ".hidden", "/etc/x", "a\\b"])
def test_keys_name_files_inside_the_output_folder(tmp_path: Path, key: str) -> None:
    name = file_name(key)
    assert (tmp_path / f"{name}.png").resolve().parent == tmp_path.resolve()
    assert not name.startswith(".") and "/" not in name and "\\" not in name


def test_plain_keys_keep_their_names() -> None:
    assert [file_name(k) for k in ("pump-7", "m1.2_x")] == ["pump-7", "m1.2_x"]


@pytest.mark.parametrize("argv,needle", [
    (["--seed", "-1"], "seed"),
    (["--seed", "99999999999"], "seed"),
    (["--dropout", "nan"], "dropout"),
    (["--key", " "], "--key is empty"),
])
def test_bad_detect_flags_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      argv: list[str], needle: str) -> None:
    csv = series_csv(tmp_path / "s.csv")
    err = one_line_error(capsys, ["detect", str(csv), "--out-dir", str(tmp_path / "o"), *argv])
    assert needle in err


def test_detect_refuses_a_blocked_output_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = series_csv(tmp_path / "s.csv")
    (tmp_path / "o" / "s.scored.csv").mkdir(parents=True)
    started = time.monotonic()
    err = one_line_error(capsys, ["detect", str(csv), "--out-dir", str(tmp_path / "o")])
    assert "s.scored.csv: not a writable file" in err
    assert not (tmp_path / "o" / "models" / "default").exists() or not any(
        (tmp_path / "o" / "models" / "default").iterdir())  # no version was trained
    assert time.monotonic() - started < 60


def test_detect_refuses_a_reversed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    csv = series_csv(tmp_path / "s.csv", reverse=True)
    err = one_line_error(capsys, ["detect", str(csv), "--out-dir", str(tmp_path / "o")])
    assert "sort the file by timestamp" in err


@pytest.mark.parametrize("argv", [["demo", "--train-rows", "nan"],
                                  ["demo", "--train-rows", "inf"],
                                  ["train", "--from-topic", "--since-hours", "nan"],
                                  ["train", "--from-topic", "--since-hours", "-5"],
                                  ["broker", "start", "--port", "70000"]])
def test_bad_numbers_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_train_without_a_broker_fails_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = series_csv(tmp_path / "s.csv")
    store = tmp_path / "store"
    started = time.monotonic()
    err = one_line_error(capsys, ["train", "--csv", str(csv), "--bootstrap-servers",
                                  "127.0.0.1:1", "--model-store", str(store)])
    assert "no Kafka broker answers at 127.0.0.1:1" in err and "--no-announce" in err
    assert time.monotonic() - started < 30  # the check, not a training, took the time


def _key(name: str, n: int, step_ms: int = 300_000) -> Series:
    ts = 1_388_534_400_000 + step_ms * np.arange(n, dtype=np.int64)
    return Series(name, ts, np.sin(np.arange(n) / 10.0))


def test_retraining_leaves_out_keys_too_short_and_says_which() -> None:
    cfg = TrainConfig(window=50, season="none")
    kept, skipped = trainable([_key("old", 3000), _key("new", 5)], cfg)
    assert [s.key for s in kept] == ["old"] and skipped == {"new": 5}


def test_a_key_short_of_a_day_does_not_turn_the_season_off_for_the_rest() -> None:
    cfg = TrainConfig(window=50, season="day")
    kept, skipped = trainable([_key("old", 3000), _key("young", 300)], cfg)
    assert [s.key for s in kept] == ["old"] and skipped == {"young": 300}
    # No key has a day to spare: all are kept, and training falls back to no season.
    kept, skipped = trainable([_key("a", 300), _key("b", 400)], cfg)
    assert [s.key for s in kept] == ["a", "b"] and skipped == {}


@pytest.mark.parametrize("text,needle", [
    ("timestamp,value\n1388534400,1\n1388534700,2\n", "epoch seconds"),
    ("timestamp,value\n1969-12-31T00:00:00Z,1\n", ":2: timestamp .* outside 1970"),
    ("timestamp,value\n2201-01-01T00:00:00Z,1\n", ":2: timestamp .* outside 1970"),
    ("timestamp,value\n2014-01-01T00:00:00Z,True\n2014-01-01T00:05:00Z,False\n",
     "true/false, not numbers"),
])
def test_files_refuse_what_the_stream_refuses(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=needle):
        read_csv(path)


def test_windows_may_be_given_in_epoch_milliseconds(tmp_path: Path) -> None:
    from processor.dataset import read_windows

    path = tmp_path / "w.json"
    path.write_text("[[1388534400000, 1388538000000]]")
    assert read_windows(path) == [(1388534400000, 1388538000000)]


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", ""])
def test_a_model_name_is_a_folder_name_inside_the_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    csv = series_csv(tmp_path / "s.csv")
    err = one_line_error(capsys, ["train", "--csv", str(csv), "--no-announce",
                                  "--model-store", str(tmp_path / "store"),
                                  "--model-name", name])
    assert "model_name" in err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize("extra,needle", [
    (["--since", "2020-01-01T00:00:00Z"], "with --csv use --rows"),
    (["--model-store", "BLOCKED"], "cannot write the model"),
])
def test_train_refuses_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       extra: list[str], needle: str) -> None:
    csv = series_csv(tmp_path / "s.csv")
    (tmp_path / "blocked").write_text("a file, not a folder")
    extra = [str(tmp_path / "blocked") if x == "BLOCKED" else x for x in extra]
    started = time.monotonic()
    err = one_line_error(capsys, ["train", "--csv", str(csv), "--no-announce", *extra])
    assert needle in err
    assert time.monotonic() - started < 30  # refused, not trained


def test_demo_checks_training_settings_before_the_broker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["demo", "--seed", "-3", "--external-broker",
                                  "--bootstrap-servers", "127.0.0.1:1",
                                  "--out-dir", str(tmp_path / "d")])
    assert "seed" in err and "KafkaError" not in err
