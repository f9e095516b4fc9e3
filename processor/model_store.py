"""Versioned model artifacts on disk: `<store>/<name>/<version>/{model.keras,metadata.json}`.

A version directory is written under a temporary name and renamed into place, so a
processor watching the store never sees half a version. The checksum in the metadata
covers the network file and is verified on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from processor.scoring import Profile, ProfileTable
from processor.windows import input_width

if TYPE_CHECKING:
    from processor.network import Predictor

NETWORK_FILE = "model.keras"
METADATA_FILE = "metadata.json"


class ModelStoreError(Exception):
    """A version is missing, incomplete or does not match its checksum."""


class DataRange(BaseModel):
    start: datetime
    end: datetime
    rows: int
    source: str


class ModelMetadata(BaseModel):
    """Everything needed to score with a version, besides the network weights."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    created_at: datetime
    window: int
    units: int
    layers: int
    steps: int = 1  # values predicted ahead (l); versions from before l > 1 existed are 1
    season: int = 0  # seasonal lag in rows the network also reads; 0: none
    profiles: dict[str, Profile]
    default_profile: Profile
    threshold: float
    threshold_method: str
    beta: float | None = None
    metrics: dict[str, float | int | None] = Field(default_factory=dict)
    data_range: DataRange
    splits: dict[str, int] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    checksum: str = ""


def new_version(now: datetime | None = None) -> str:
    """Sortable version id: UTC time to the microsecond (`v20240101T000000123456Z`)."""
    t = (now or datetime.now(UTC)).astimezone(UTC)
    return t.strftime("v%Y%m%dT%H%M%S%fZ")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_version(store: Path, metadata: ModelMetadata, network: Any) -> Path:
    """Write the network and its metadata atomically; return the version directory."""
    final = store / metadata.name / metadata.version
    if final.exists():
        raise ModelStoreError(f"version {metadata.version} already exists in {final.parent}")
    tmp = final.parent / f".{metadata.version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    network.save(tmp / NETWORK_FILE)
    metadata = metadata.model_copy(update={"checksum": file_sha256(tmp / NETWORK_FILE)})
    (tmp / METADATA_FILE).write_text(metadata.model_dump_json(indent=2))
    os.replace(tmp, final)
    return final


def read_metadata(version_dir: Path) -> ModelMetadata:
    path = version_dir / METADATA_FILE
    try:
        return ModelMetadata.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ModelStoreError(f"no model version at {version_dir}") from exc
    except ValueError as exc:
        raise ModelStoreError(f"unreadable metadata in {path}: {exc}") from exc


def list_versions(store: Path, name: str) -> list[Path]:
    """Complete versions of a model, oldest first."""
    root = store / name
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        and (p / METADATA_FILE).exists()
    )


def latest_version(store: Path, name: str) -> Path | None:
    versions = list_versions(store, name)
    return versions[-1] if versions else None


@dataclass
class LoadedModel:
    """A version ready to score: metadata, profile arrays and the compiled predictor."""

    metadata: ModelMetadata
    table: ProfileTable
    predictor: Predictor
    path: Path

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def window(self) -> int:
        return self.metadata.window

    @property
    def steps(self) -> int:
        return self.metadata.steps

    @property
    def input_width(self) -> int:
        """Values one forward pass reads (the window, and a season back with a season)."""
        md = self.metadata
        return input_width(md.window, md.season, md.steps)

    @property
    def history(self) -> int:
        """Values a key needs before its next one can be scored: the input and l - 1."""
        return self.input_width + self.metadata.steps - 1


def load_version(version_dir: Path) -> LoadedModel:
    """Load and verify a version (imports TensorFlow)."""
    from processor.network import Predictor, load_network

    metadata = read_metadata(version_dir)
    network_path = version_dir / NETWORK_FILE
    if not network_path.exists():
        raise ModelStoreError(f"{network_path} is missing")
    actual = file_sha256(network_path)
    if actual != metadata.checksum:
        raise ModelStoreError(
            f"checksum mismatch for {network_path}: metadata {metadata.checksum[:12]}, "
            f"file {actual[:12]}"
        )
    network = load_network(str(network_path))
    table = ProfileTable(metadata.profiles, metadata.default_profile)
    if table.steps != metadata.steps:
        raise ModelStoreError(f"{version_dir}: metadata says {metadata.steps} steps, its "
                              f"profiles {table.steps}")
    predictor = Predictor(network, input_width(metadata.window, metadata.season,
                                               metadata.steps), steps=metadata.steps)
    return LoadedModel(metadata, table, predictor, version_dir)


def metadata_summary(metadata: ModelMetadata) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        metadata.model_dump_json(include={"name", "version", "threshold", "threshold_method",
                                          "metrics", "window"})
    )
    return out
