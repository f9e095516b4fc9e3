"""Settings from environment variables (prefix `ANOMALY_`) and command-line flags.

Every field is also a flag of the commands that use it (`--input-topic` for
`input_topic`); a flag beats the environment, which beats the default. Defaults work
against the local broker that `anomaly broker start` runs.
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: librdkafka settings whose names contain these may hold credentials: never logged.
SECRET_HINTS = ("password", "secret", "key", "token", "oauthbearer", "jaas", "credential",
                "sasl.username")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANOMALY_", extra="ignore",
                                      allow_inf_nan=False)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("bootstrap_servers", "ANOMALY_BOOTSTRAP_SERVERS",
                                      "KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers (also read from KAFKA_BOOTSTRAP_SERVERS).",
    )
    # NoDecode: the JSON is parsed by the validator below, so a bad value in the
    # environment gets the same clear message as on the command line.
    kafka_config: Annotated[dict[str, str | int | float | bool], NoDecode] = Field(
        default_factory=dict,
        description="Extra librdkafka settings as JSON, e.g. security.protocol and sasl.*; "
        "applied to every client.",
    )
    input_topic: str = "series.input"
    scored_topic: str = "series.scored"
    alert_topic: str = "series.alerts"
    dead_letter_topic: str = "series.deadletter"
    model_topic: str = "series.models"
    group_id: str = "anomaly-processor"
    partitions: int = Field(4, ge=1, description="Partitions of topics this tool creates.")
    model_store: Path = Field(
        Path(".local/models"),
        validation_alias=AliasChoices("model_store", "ANOMALY_MODEL_STORE", "MODEL_STORE"),
        description="Directory of model versions (shared by trainer and processors).",
    )
    model_name: str = Field(
        "default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Name of the model in the store: a folder name (letters, digits, . _ -), "
        "so a version never lands outside model_store.")
    batch_max_records: int = Field(4096, ge=1, description="Most records scored per batch.")
    batch_max_wait_s: float = Field(
        0.1, gt=0, description="Longest wait for input when none has arrived; a batch is "
        "whatever has arrived (up to batch_max_records), never held back to fill up."
    )
    inference_threads: int = Field(
        0, ge=0, description="Threads of one forward pass (TensorFlow intra-op); 0: every "
        "usable core (CPU limit in a container) but one, left to Kafka I/O and decoding.")
    inference_priority: bool = Field(
        True, description="Linux: the processor's other threads (polling, committing, the "
        "Kafka clients') run under SCHED_BATCH, so their wake-ups do not preempt the forward "
        "pass; no privilege needed.")
    max_message_bytes: int = Field(1_000_000, ge=64, description="Input records above this "
                                   "size are dead-lettered unread.")
    max_future_s: float = Field(
        86_400.0, ge=0, allow_inf_nan=False, description="Records stamped more than this "
        "many seconds ahead of the processor's clock are dead-lettered as future_timestamp: "
        "one such record would make every later real record of its key out of order "
        "(0: no limit).")
    initial_key_capacity: int = Field(1024, ge=1)
    http_port: int | None = Field(
        8080, le=65535, description="Port of /healthz, /readyz and /metrics (0: any free port; "
        "negative: none).")
    processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once",
        description="exactly_once: outputs, window state and offsets commit in one Kafka "
        "transaction; at_least_once: outputs first, then offsets (lower latency, duplicates "
        "possible after a crash).")
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="Names this processor's transactional producer (and its static group "
        "membership when enabled); must be unique among running processors.")
    static_membership: bool = Field(
        False, description="Join the group with group.instance.id = instance_id, so a "
        "restarted instance gets its partitions back without a rebalance.")
    session_timeout_ms: int = Field(10_000, ge=1000)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    transaction_timeout_ms: int = Field(60_000, ge=1000)
    commit_interval_ms: float = Field(
        15.0, ge=0, description="exactly_once: least time from one transaction's commit to "
        "the next one's start; batches scored meanwhile join that next one. A transaction "
        "begun sooner waits on the broker writing the previous commit's markers (librdkafka "
        "retries, often 100 ms).")
    batch_time_budget_s: float = Field(
        5.0, gt=0, description="Batches are sized so that scoring one takes about this long "
        "at most; keep well under max_poll_interval_ms.")
    restore_timeout_s: float = Field(300.0, gt=0)
    idle_evict_s: float = Field(
        0.0, ge=0, description="Keys idle this long leave memory (state stays in the "
        "changelog and a local spill store); 0 keeps every key in memory.")
    gap_reset_intervals: float = Field(
        24.0, ge=0, description="A value more than this many sampling intervals after the "
        "previous one restarts the key's window; 0 never resets.")
    alert_score: float = Field(
        0.5, gt=0, lt=1, description="Anomaly score above which a record that peaks its "
        "key's last 200 scores raises an alert (unless the key alerted in its last 100 "
        "records); 0.5: an error larger than the key's recent one-in-a-thousand.")
    state_dir: Path = Field(Path(".local/state"), description="Local spill store of evicted "
                            "keys (a cache of the changelog).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_json: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _json_dict(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        if isinstance(v, dict):
            for key, value in v.items():
                if not isinstance(value, str | int | float | bool):
                    raise ValueError(f"{key!r}: librdkafka takes a string, number or "
                                     f"boolean, got {json.dumps(value)}")
        return v

    @property
    def changelog_topic(self) -> str:
        """Window state of this processor group, co-partitioned with the input topic."""
        return f"{self.group_id}.windows-changelog"

    def secrets_redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log: credential-looking values masked."""
        out = self.model_dump(mode="json")
        out["kafka_config"] = {
            k: ("***" if any(s in k.lower() for s in SECRET_HINTS) else v)
            for k, v in self.kafka_config.items()
        }
        return out


def add_settings_flags(parser: argparse.ArgumentParser, fields: list[str]) -> None:
    """Add `--field-name` flags for the given settings fields (parsed by pydantic later)."""
    for name in fields:
        info = Settings.model_fields[name]
        flag = "--" + name.replace("_", "-")
        default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
        about = f"{info.description} " if info.description else ""
        parser.add_argument(flag, dest=f"setting_{name}", default=None, metavar="VALUE",
                            help=f"{about}[env ANOMALY_{name.upper()}; default {default}]")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment plus any flags given on the command line."""
    given = {k.removeprefix("setting_"): v for k, v in vars(args).items()
             if k.startswith("setting_") and v is not None}
    return Settings(**given)
