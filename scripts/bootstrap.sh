#!/usr/bin/env bash
# Create .venv and install the project with its dev tools; a no-op when already current.
# Needs: python3.11 on PATH (or PYTHON=...), and for the local broker Java 17+ and Maven.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY' || { echo "bootstrap: Python 3.11 is required" >&2; exit 2; }
import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY
for tool in java mvn; do
  command -v "$tool" >/dev/null 2>&1 || echo "bootstrap: warning: '$tool' not found; the local Kafka broker needs Java 17+ and Maven" >&2
done
command -v go >/dev/null 2>&1 || [ -n "${KUSTOMIZE:-}" ] || echo "bootstrap: warning: 'go' not found; scripts/validate-deploy.sh builds kustomize with Go 1.24+" >&2
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
echo "bootstrap: installing into .venv (first run takes a few minutes: TensorFlow CPU)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
rm -f .venv/.installed-*
touch "$stamp"
