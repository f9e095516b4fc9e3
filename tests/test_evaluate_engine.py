"""The evaluation's NAB scores are the engine's, also when re-scored under another rule."""

import numpy as np
import pytest

from processor.calibration import ScoreColumns, ScoreRule, nab_score
from processor.dataset import Series
from processor.evaluate import EvalConfig, _train, file_errors
from processor.nab.corpus import load_corpus
from processor.nab.scoring import probation_length
from tests.nab_data import NAB_DIR

pytestmark = pytest.mark.slow

NAME = "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"


def test_rescoring_cached_deviations_is_running_the_engine_with_that_rule():
    cf = load_corpus(NAB_DIR, [NAME])[NAME]
    cfg = EvalConfig(window=16, units=8, epochs=2, retrain="none")
    n = len(cf.values)
    ts = cf.timestamps.astype("datetime64[ms]").astype(np.int64)
    model = _train(Series("s", ts, cf.values.astype(np.float64)).slice(
        0, probation_length(n)), cfg, 16, cfg.season)
    other = ScoreRule(panes=5, group_panes=5, quiet=20, needs_band=True)
    default = file_errors(cf, cfg, first_model=model)
    direct = file_errors(cf, cfg, first_model=model, rule=other)
    assert default.alert is not None and direct.alert is not None
    assert direct.score is not None and direct.peak is not None
    np.testing.assert_array_equal(default.deviation, direct.deviation)
    np.testing.assert_array_equal(default.nab_scores(other),
                                  nab_score(ScoreColumns(direct.score, direct.peak,
                                                         direct.alert)))
    np.testing.assert_array_equal(direct.nab_scores(ScoreRule()), default.nab_scores())
    # The two rules differ where it matters: not a comparison of two empty arrays.
    assert default.alert.sum() > 0
    assert not np.array_equal(default.alert, direct.alert)
