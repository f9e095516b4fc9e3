#!/usr/bin/env bash
# The NAB path: the quoted run and the variants around it, one `anomaly evaluate` each.
# Each writes benchmarks/results/nab-path/<name>.json (with its exact command and the
# machine), the quoted one (default) benchmarks/results/nab-dev.json. Variants of the score
# rule re-score the errors cached by the run before them (seconds); model variants train
# anew (10-20 minutes each on 2 cores). About two hours in all, uncached.
#   scripts/nab-path.sh            # everything
#   scripts/nab-path.sh NAME...    # some of them (names below)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
out=benchmarks/results/nab-path
mkdir -p "$out"

declare -A FLAGS=(
  # the detector as quoted in the README
  [default]=""
  # what the season adds: the same network without it, scored the same way
  [no-season]="--season none"
  # the configuration quoted before this path: no season, offline calibration and grouping
  [before]="--season none --calibrate 0.999 --group 200"
  [quiet-0]="--quiet-rows 0"
  [quiet-200]="--quiet-rows 200"
  [alert-0.4]="--alert-score 0.4"
  [reference-500]="--reference-rows 500"
  [reference-2000]="--reference-rows 2000"
  [peak-100]="--peak-rows 100"
  [peak-400]="--peak-rows 400"
  # alert only where the model's own threshold flags the row too
  [needs-band]="--needs-band"
  # no gap resets (the processor's default restarts a window after 24 intervals)
  [no-gap-reset]="--gap-reset-intervals 0"
  # no network: the persistence forecast's errors, scored the same way
  [persistence]="--persistence"
  # the spread that training alone gives
  [seed-1]="--seed 1"
  [seed-2]="--seed 2"
  # Malhotra's l-step prediction
  [steps-3]="--steps 3"
  [window-60]="--window 60"
  [units-64]="--units 64"
  # the training schedule: the probationary model only, never retrained
  [retrain-none]="--retrain none"
)
ORDER=(default quiet-0 quiet-200 alert-0.4 reference-500 reference-2000 peak-100 peak-400
       needs-band persistence seed-1 seed-2 window-60 units-64 no-season before
       no-gap-reset steps-3 retrain-none)

names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")
for name in "${names[@]}"; do
  if [ -z "${FLAGS[$name]+set}" ]; then
    echo "nab-path: no variant '$name' (one of: ${ORDER[*]})" >&2
    exit 2
  fi
done
for name in "${names[@]}"; do
  target="$out/$name.json"
  [ "$name" != default ] || target=benchmarks/results/nab-dev.json
  echo "=== $name: anomaly evaluate ${FLAGS[$name]} --out $target" >&2
  # shellcheck disable=SC2086  # the flags are words
  .venv/bin/anomaly evaluate ${FLAGS[$name]} --out "$target" --log-level WARNING
done
