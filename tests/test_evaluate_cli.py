"""`anomaly evaluate`'s options: parsed, validated in one line, and kept apart in the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import structlog

from processor.cli import build_parser
from processor.evaluate import EvalConfig, cache_path, series_window
from processor.nab.corpus import CorpusFile
from processor.postprocess import PostProcess


def test_calibration_flags_parse() -> None:
    args = build_parser().parse_args(["evaluate", "--calibrate", "0.999",
                                      "--calibrate-rows", "500"])
    assert (args.calibrate, args.calibrate_rows) == (0.999, 500)
    args = build_parser().parse_args(["evaluate"])
    assert (args.calibrate, args.calibrate_rows, args.relative) == (0.0, 2000, False)


@pytest.mark.parametrize("flag,value,message", [
    ("--calibrate", "1.5", "between 0 and 1"),
    ("--calibrate", "-0.1", "between 0 and 1"),
    ("--calibrate", "high", "is not a number"),
    ("--calibrate-rows", "50", "100"),
])
def test_bad_calibration_values_are_one_line_errors(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["evaluate", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err


def test_window_is_capped_by_the_probationary_rows() -> None:
    cfg = EvalConfig(window=96)
    assert series_window(cfg, 750) == 96
    assert series_window(cfg, 186) == 46  # the shortest NAB series
    assert series_window(EvalConfig(window=30), 186) == 30


def test_model_variants_do_not_share_cached_errors(tmp_path: Path) -> None:
    cf = CorpusFile("realKnownCause/nyc_taxi.csv", np.array([], "datetime64[ms]"),
                    np.array([]), [])
    keys = {cache_path(cf, cfg, tmp_path).parent.name for cfg in (
        EvalConfig(), EvalConfig(relative=True), EvalConfig(steps=3), EvalConfig(window=96),
        EvalConfig(season="none"), EvalConfig(season=48), EvalConfig(gap_reset_intervals=0))}
    assert len(keys) == 7
    assert cache_path(cf, EvalConfig(), tmp_path).parent.name == \
        "w30-u32-e30-doubling-s0-season-day-gap24"


def test_scores_say_how_many_windows_were_detected_and_rows_outside_them() -> None:
    from processor.evaluate import FileErrors, nab_scores
    from tests.nab_data import NAB_DIR

    n = 1000
    error = np.zeros(n)
    error[[520, 800]] = 50.0  # one row inside the window, one far outside any
    cf = CorpusFile("a/x.csv", np.arange(n).astype("datetime64[m]"), np.zeros(n),
                    [(500, 549), (600, 649)])
    fe = FileErrors(error, np.zeros(n), np.ones(n))
    out = nab_scores(["a/x.csv"], {"a/x.csv": cf}, {"a/x.csv": fe.scores(PostProcess())},
                     NAB_DIR)
    for profile in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"):
        assert out[f"{profile}_windows_detected"] == 1
        assert out[f"{profile}_fp_rows"] == 1


def test_persistence_baseline_errors_are_scaled_differences() -> None:
    from processor.evaluate import persistence_errors
    from processor.nab.scoring import probation_length

    rng = np.random.default_rng(6)
    values = np.cumsum(rng.normal(size=1000)) + 100.0
    cf = CorpusFile("a/x.csv", np.arange(1000).astype("datetime64[m]"), values, [])
    fe = persistence_errors(cf)
    p = probation_length(1000)
    scale = values[:p].std()
    assert np.isnan(fe.error[0])
    np.testing.assert_allclose(fe.error[1:], np.diff(values) / scale)
    # The Gaussian is the ML fit of the probationary errors only.
    np.testing.assert_allclose(fe.mean, np.mean(np.diff(values[:p]) / scale))
    np.testing.assert_allclose(fe.var, np.var(np.diff(values[:p]) / scale))
    assert build_parser().parse_args(["evaluate", "--persistence"]).persistence


@pytest.mark.parametrize("flag,value,message", [
    ("--horizon", "99999999999999999999", "at most"),
    ("--group", "1e30", "not a whole number"),
    ("--seed", "-1", "at least 0"),
    ("--window", "0", "at least 2"),
    ("--units", "100000", "at most"),
])
def test_out_of_range_model_and_row_flags_are_one_line_errors(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", flag, value])
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def _nab_folder(root: Path, csv: str) -> Path:
    from tests.nab_data import NAB_DIR

    (root / "data" / "c").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "config").mkdir()
    (root / "config" / "profiles.json").write_text(
        (NAB_DIR / "config" / "profiles.json").read_text())
    (root / "labels" / "combined_windows.json").write_text('{"c/x.csv": []}')
    (root / "data" / "c" / "x.csv").write_text(csv)
    return root


@pytest.mark.parametrize("csv,message", [
    ("timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,abc\n", "not a timestamp"),
    ("timestamp,reading\n2020-01-01 00:00:00,1\n", "not a timestamp"),
    ("", "not a timestamp"),
    ("timestamp,value\nnotatime,1\n", "not a timestamp"),
    ("timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,\n", "row 3 has no finite"),
])
def test_bad_data_files_are_refused_before_training(tmp_path: Path, csv: str,
                                                    message: str) -> None:
    from processor.dataset import DataError
    from processor.evaluate import checked_corpus

    root = _nab_folder(tmp_path, csv)
    with pytest.raises(DataError) as exc:
        checked_corpus(root, ["c/x.csv"])
    assert message in str(exc.value) and "x.csv" in str(exc.value)


def test_a_folder_without_published_tables_has_no_comparison(tmp_path: Path) -> None:
    from processor.evaluate import _published
    from tests.nab_data import NAB_DIR

    root = _nab_folder(tmp_path, "timestamp,value\n2020-01-01 00:00:00,1\n")
    assert _published(root, "numenta", ["c/x.csv"]) == {}
    assert _published(NAB_DIR, "numenta", ["realKnownCause/nyc_taxi.csv"])["standard"] > 0


GOOD = "timestamp,value\n" + "".join(
    f"2020-01-01 {h:02d}:{m:02d}:00,{(h * 60 + m) % 7}\n"
    for h in range(24) for m in range(0, 60, 5))


@pytest.mark.parametrize("name", ["/etc/passwd", "c/../../x.csv", "x.csv", "c/d/x.csv"])
def test_files_outside_data_are_refused(tmp_path: Path, name: str) -> None:
    from processor.dataset import DataError
    from processor.evaluate import checked_corpus

    root = _nab_folder(tmp_path, GOOD)
    with pytest.raises(DataError, match=r"<category>/<name>\.csv"):
        checked_corpus(root, [name])


def test_duplicates_unsorted_rows_and_bad_profiles_are_refused(tmp_path: Path) -> None:
    from processor.dataset import DataError
    from processor.evaluate import checked_corpus

    root = _nab_folder(tmp_path, GOOD)
    assert len(checked_corpus(root, ["c/x.csv"])) == 1
    with pytest.raises(DataError, match="named twice"):
        checked_corpus(root, ["c/x.csv", "c/x.csv"])
    rows = GOOD.splitlines()
    # One row moved far ahead: every later row is then "in the past" and would be skipped.
    moved = [rows[0], rows[1].replace("2020-01-01", "2020-01-02"), *rows[2:]]
    (root / "data" / "c" / "x.csv").write_text("\n".join(moved) + "\n")
    with pytest.raises(DataError, match="sort the file"):
        checked_corpus(root, ["c/x.csv"])
    (root / "data" / "c" / "x.csv").write_text(GOOD)
    (root / "config" / "profiles.json").write_text(
        '{"standard": {"CostMatrix": {"tpWeight": 0, "fpWeight": 0.11, "fnWeight": 1}}}')
    with pytest.raises(DataError, match="no profile"):
        checked_corpus(root, ["c/x.csv"])


def test_out_inside_the_benchmark_folder_is_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from processor.cli import main

    root = _nab_folder(tmp_path / "nab", GOOD)
    target = root / "data" / "c" / "x.csv"
    try:
        code = main(["evaluate", "--nab-dir", str(root), "--files", "c/x.csv",
                     "--out", str(target), "--out-dir", str(tmp_path / "out")])
    finally:
        structlog.reset_defaults()  # main() bound the logs to this test's captured stderr
    assert code == 2
    assert "inside --nab-dir" in capsys.readouterr().err
    assert target.read_text() == GOOD  # the data file is untouched


def test_a_corrupt_cache_entry_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    import processor.evaluate as ev

    n = 20
    monkeypatch.setattr(ev, "file_errors", lambda cf, cfg: ev.FileErrors(
        np.ones(n), np.zeros(n), np.ones(n)))
    cf = CorpusFile("c/x.csv", np.arange(n).astype("datetime64[m]"), np.zeros(n), [])
    path = ev.cache_path(cf, EvalConfig(), tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    assert not ev._cached(cf, EvalConfig(), tmp_path)
    got = ev.cached_errors(cf, EvalConfig(), tmp_path)
    np.testing.assert_array_equal(got.error, np.ones(n))
    assert ev._cached(cf, EvalConfig(), tmp_path)
    assert not list(path.parent.glob("*.partial"))


def test_a_season_the_probationary_rows_cannot_train_is_refused_up_front(tmp_path: Path
                                                                         ) -> None:
    from processor.dataset import DataError
    from processor.evaluate import checked_corpus

    root = _nab_folder(tmp_path, GOOD)  # 288 rows: 43 probationary
    assert len(checked_corpus(root, ["c/x.csv"], EvalConfig(window=8, season="none"))) == 1
    with pytest.raises(DataError, match=r"x\.csv: .* too few to train on a season of 24"):
        checked_corpus(root, ["c/x.csv"], EvalConfig(window=8, season=24))
