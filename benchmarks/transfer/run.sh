#!/usr/bin/env bash
# The with/without-transfer comparison in benchmarks/transfer/README.md. About an hour on 2 cores.
# Each step resumes if interrupted (tune resumes; bench re-runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
T=.venv/bin/tunekit
LOGS=tuning_logs
OUT=benchmarks/transfer
# A: every resolution tuned independently, 4 trials per task (481 trials in all)
time $T tune --model resnet18 --res 112..448 --target host --trials-per-task 4 --no-transfer \
    --db $LOGS/resnet18-independent.db
# B: the same total budget with transfer: anchor 224 first with the full per-task share, the rest a quarter
time $T tune --model resnet18 --res 112..448 --target host --trials 481 --anchor 224 --db $LOGS/tunekit.db
# C: zero-search: only B's anchor (224) records; the other resolutions build from adapted schedules
.venv/bin/python benchmarks/transfer/report.py anchor-only $LOGS/tunekit.db 224 $LOGS/resnet18-anchor224.db
for run in independent:$LOGS/resnet18-independent.db transfer:$LOGS/tunekit.db zero-search:$LOGS/resnet18-anchor224.db; do
    name=${run%%:*}; db=${run#*:}
    $T bench --model resnet18 --res 112..448 --target host --db "$db" --backends tuned,untuned,onednn \
        --output $OUT/$name.json --output $OUT/$name.md
done
.venv/bin/python benchmarks/transfer/report.py table $OUT $LOGS/resnet18-independent.db $LOGS/tunekit.db \
    > $OUT/README.md
