#!/usr/bin/env bash
# The main job: set up, start a local Kafka broker, train on the first part of a real
# labelled series, stream the rest through the processor, print a summary and a plot.
# Extra arguments go to `anomaly demo` (e.g. --csv my.csv --labels windows.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/anomaly demo --log-json false "$@"
