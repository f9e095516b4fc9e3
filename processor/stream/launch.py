"""Run `anomaly run` as a child process with given settings (the demo and the benchmark)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from processor.config import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the ANOMALY_* variable the child reads it from."""
    out = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        out[f"ANOMALY_{name.upper()}"] = (json.dumps(value) if isinstance(value, dict | list)
                                          else str(value))
    out["KAFKA_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
    return out


def start_processor(settings: Settings, log_path: Path,
                    extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env(settings), "ANOMALY_LOG_JSON": "true",
           **(extra_env or {})}
    with log_path.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "processor.cli", "run"], env=env,
                                stdout=fh, stderr=subprocess.STDOUT)


def stop_processor(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    """SIGTERM (a clean stop), SIGKILL if it does not end in time; the exit status."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def with_run_topics(settings: Settings, prefix: str) -> Settings:
    """Topics, group and model name of their own, for one demo or benchmark run."""
    return settings.model_copy(update={
        "input_topic": f"{prefix}.input", "scored_topic": f"{prefix}.scored",
        "alert_topic": f"{prefix}.alerts", "dead_letter_topic": f"{prefix}.deadletter",
        "model_topic": f"{prefix}.models", "group_id": prefix})
