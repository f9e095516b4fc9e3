"""`anomaly detect`: train on a CSV and score it offline, no broker needed.

The file is split and trained on exactly as `anomaly train` does, then every row is fed,
in batches and in order, through the same `Engine` the stream processor runs, so the
scores equal what streaming the file would give.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from processor.calibration import ScoreRule
from processor.dataset import Series, Windows
from processor.engine import Engine, Observation, Rejected
from processor.model_store import LoadedModel, ModelMetadata
from processor.scoring import ProfileTable
from processor.train import TrainConfig, TrainOutcome, train
from processor.windows import input_width
from schemas.records import ScoredRecord

SCORED_COLUMNS = [
    "key", "timestamp", "value", "status", "prediction", "error", "log_pd", "threshold",
    "anomaly", "band_low", "band_high", "profile", "anomaly_score", "peak", "alert",
    "model_version", "source_partition", "source_offset",
]


@dataclass(frozen=True)
class Detection:
    outcome: TrainOutcome
    scored: list[ScoredRecord]
    rejected_rows: list[int]


def loaded_from_outcome(outcome: TrainOutcome, path: Path) -> LoadedModel:
    """A `LoadedModel` over the in-memory network (no reload from disk needed)."""
    from processor.network import Predictor

    md: ModelMetadata = outcome.metadata
    table = ProfileTable(md.profiles, md.default_profile)
    width = input_width(md.window, md.season, md.steps)
    return LoadedModel(md, table, Predictor(outcome.network, width, steps=md.steps), path)


def observations(series: Series) -> Iterator[Observation]:
    """Rows as observations; the row number stands in for the Kafka offset."""
    for i, (ts, v) in enumerate(zip(series.timestamps.tolist(), series.values.tolist(),
                                    strict=True)):
        yield Observation(series.key, int(ts), float(v), 0, i)


@dataclass(frozen=True)
class SeriesResult:
    scored: list[ScoredRecord]
    rejected: list[Rejected]


def score_series(engine: Engine, series: Series, batch_size: int = 1024) -> SeriesResult:
    scored: list[ScoredRecord] = []
    rejected: list[Rejected] = []
    batch: list[Observation] = []
    for obs in observations(series):
        batch.append(obs)
        if len(batch) == batch_size:
            r = engine.process(batch)
            scored += r.scored
            rejected += r.rejected
            batch = []
    if batch:
        r = engine.process(batch)
        scored += r.scored
        rejected += r.rejected
    return SeriesResult(scored, rejected)


def detect(series: Series, cfg: TrainConfig, source: str, model_dir: Path,
           rule: ScoreRule | None = None) -> Detection:
    from processor.model_store import save_version

    outcome = train([series], cfg, source)
    path = save_version(model_dir, outcome.metadata, outcome.network)
    engine = Engine(loaded_from_outcome(outcome, path), rule=rule)
    result = score_series(engine, series)
    return Detection(outcome, result.scored, [r.observation.offset for r in result.rejected])


def write_scored_csv(records: Sequence[ScoredRecord], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SCORED_COLUMNS)
        writer.writeheader()
        for r in records:
            writer.writerow(r.model_dump(mode="json"))
    return path


def write_scored_jsonl(records: Sequence[ScoredRecord], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for r in records:
            fh.write(r.model_dump_json() + "\n")
    return path


def windows_hit(records: Sequence[ScoredRecord], windows: Windows) -> int:
    """How many labelled windows contain at least one alert."""
    times = [int(r.timestamp.timestamp() * 1000) for r in records if r.alert]
    return sum(any(start <= t <= end for t in times) for start, end in windows)
