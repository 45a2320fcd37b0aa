#!/usr/bin/env bash
# Run benchmark experiments through the pipeline on a GPU box and aggregate each one: the exact
# commands behind the numbers in docs/benchmarks.md.
#
#   bash scripts/gpu_benchmarks.sh RESULTS_DIR SPEC:EXPERIMENT [SPEC:EXPERIMENT ...]
#   e.g. bash scripts/gpu_benchmarks.sh results specs/codec_bench.yaml:codec_bench
#
# Each experiment runs as `python -m pipeline.launch SPEC --name EXP --executor local`, bounded by
# EXP_TIMEOUT seconds (default 600): a run cut off by the bound leaves no summary.json and is
# redone by the next launch, finished runs are kept. Extra launch flags go in LAUNCH_FLAGS.
set -uo pipefail
results=${1:?usage: gpu_benchmarks.sh RESULTS_DIR SPEC:EXPERIMENT ...}
shift
py=${PYTHON:-python3}
status=0
for item in "$@"; do
    spec=${item%%:*}
    name=${item#*:}
    echo "== $(date -u +%H:%M:%S) $py -m pipeline.launch $spec --name $name --executor local --results $results ${LAUNCH_FLAGS:-}"
    # shellcheck disable=SC2086
    timeout "${EXP_TIMEOUT:-600}" "$py" -m pipeline.launch "$spec" --name "$name" --executor local \
        --results "$results" ${LAUNCH_FLAGS:-} || { echo "!! $name ended with exit $?"; status=1; }
    "$py" -m pipeline.aggregate "$results" --experiment "$name" || status=1
done
exit $status
