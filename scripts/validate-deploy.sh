#!/usr/bin/env bash
# Render every Kustomize tree under deploy/k8s and validate it offline: Kubernetes JSON
# schemas (kubernetes-validate), the vendored KEDA schemas, this deployment's own rules
# (security context, probes, replicas within partitions, ...), and hadolint on
# deploy/Dockerfile. No cluster, no Docker; the first run builds kustomize (about a
# minute) into .local/bin, later runs take a few seconds.
#
# Needs Go 1.24+ (to build kustomize) unless KUSTOMIZE names a kustomize binary, and
# Python 3.11 (scripts/bootstrap.sh installs the validators with the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION=v5.8.1
bin_dir="$PWD/.local/bin"
kustomize="${KUSTOMIZE:-$bin_dir/kustomize}"

if [ -z "${KUSTOMIZE:-}" ] && ! { [ -x "$kustomize" ] \
    && [ "$("$kustomize" version 2>/dev/null)" = "$KUSTOMIZE_VERSION" ]; }; then
  if ! command -v go >/dev/null 2>&1; then
    echo "validate-deploy: Go 1.24+ is needed to build kustomize $KUSTOMIZE_VERSION" \
         "(or set KUSTOMIZE=/path/to/kustomize)" >&2
    exit 2
  fi
  echo "validate-deploy: building kustomize $KUSTOMIZE_VERSION into .local/bin" \
       "(once; about a minute)" >&2
  mkdir -p "$bin_dir"
  GOBIN="$bin_dir" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

scripts/bootstrap.sh
exec .venv/bin/python scripts/validate_deploy.py --kustomize "$kustomize" \
  --hadolint .venv/bin/hadolint "$@"
