"""Wire contract of the anomaly processor (pydantic v2 models and their JSON Schema)."""

from schemas.records import (
    Alert,
    DeadLetter,
    DeadLetterReason,
    InputRecord,
    ModelAnnouncement,
    ScoredRecord,
    Status,
)

__all__ = [
    "Alert",
    "DeadLetter",
    "DeadLetterReason",
    "InputRecord",
    "ModelAnnouncement",
    "ScoredRecord",
    "Status",
]
