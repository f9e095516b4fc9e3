"""Numenta Anomaly Benchmark scoring, so our detector can be ranked against NAB's scoreboard."""

from processor.nab.scoring import (
    CorpusScore,
    CostMatrix,
    FileScore,
    PreparedFile,
    ThresholdSweep,
    Window,
    normalise,
    null_score,
    perfect_score,
    prepare_file,
    probation_length,
    scaled_sigmoid,
    score_corpus,
    score_file,
    score_prepared,
    sweep_thresholds,
)

__all__ = [
    "CorpusScore",
    "CostMatrix",
    "FileScore",
    "PreparedFile",
    "ThresholdSweep",
    "Window",
    "normalise",
    "null_score",
    "perfect_score",
    "prepare_file",
    "probation_length",
    "scaled_sigmoid",
    "score_corpus",
    "score_file",
    "score_prepared",
    "sweep_thresholds",
]
