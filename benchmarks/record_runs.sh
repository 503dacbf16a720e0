#!/usr/bin/env bash
# Records the numbers a refactor must not change: 60-step runs of every
# method's tiny config (every step logged), a BERT run, and the README's
# probe commands on those checkpoints. Run it on a checkout before and after
# a change, then compare the two folders with benchmarks/compare_runs.py.
#
#   bash benchmarks/record_runs.sh . /tmp/runs_after      (about 15 min on 2 cores)
set -uo pipefail
REPO=$(cd "$1" && pwd); OUT=$2
mkdir -p "$OUT"; cd "$REPO"
export PYTHONPATH=$REPO
run() {
  local name=$1; shift
  echo "== $name"
  python main.py "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$?"
}
for m in patchformer randsac igpt; do
  run "$m" --config=configs/$m.py:tiny --workdir="$OUT/$m" --config.total_steps=60 --config.log_every=1
done
run igpt_bert --config=configs/igpt.py:tiny,bert --workdir="$OUT/igpt_bert" --config.total_steps=40 --config.log_every=1
for m in patchformer randsac igpt; do
  run "${m}_probe" --config=configs/linear_probe.py:${m}_tiny --config.init.workdir="$OUT/$m" \
      --workdir="$OUT/${m}_probe" --config.total_steps=40 --config.log_every=1
  run "${m}_ft" --config=configs/finetune.py:${m}_tiny --config.init.workdir="$OUT/$m" \
      --workdir="$OUT/${m}_ft" --config.total_steps=30 --config.log_every=1
done
run pixels_probe --config=configs/linear_probe.py:pixels_tiny --workdir="$OUT/pixels_probe" \
    --config.total_steps=40 --config.log_every=1
run igpt_layers --config=configs/linear_probe.py:igpt_tiny --layer_sweep \
    --config.init.workdir="$OUT/igpt" --workdir="$OUT/igpt_layers"
run igpt_lowdata --config=configs/linear_probe.py:igpt_tiny --low_data \
    --config.init.workdir="$OUT/igpt" --workdir="$OUT/igpt_lowdata"
