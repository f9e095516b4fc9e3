#!/usr/bin/env bash
# Everything CI checks: lint, types, schema drift and the tests (broker tests included:
# they start a local Kafka broker unless KAFKA_BOOTSTRAP_SERVERS names one).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check processor schemas tests scripts
.venv/bin/mypy processor schemas scripts/validate_deploy.py
.venv/bin/python -m pytest "$@"
