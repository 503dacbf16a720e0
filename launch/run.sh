#!/usr/bin/env bash
# Runs one main.py command on every worker of the slice: one log per worker
# in the workdir's bucket, worker 0's on this terminal, and every worker
# stopped as soon as one fails.
# shellcheck source=launch/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
  cat <<USAGE
Usage: launch/run.sh --workdir=gs://BUCKET/DIR [flags] -- MAIN_PY_FLAGS...

Runs \`python main.py --distributed --workdir=DIR MAIN_PY_FLAGS\` in
~/ssl_jax (launch/setup.sh) on every worker of NAME, at once. Each
worker's output goes to DIR/logs/worker-I.log (copied every
--sync_seconds and at the end); worker 0's is also shown here. When a
worker exits with a non-zero status the others are stopped, and run.sh
exits with that status: 0 finished, 2 a bad flag or config (fix it), 75
preempted or the workdir held by another run (run again: it resumes), 255
a worker lost (its VM gone: see launch/status.sh), 1 a failure.

  --workdir=DIR        the run's workdir (gs://..., shared by every worker)
  --sync_seconds=N     how often each worker copies its log to DIR/logs (default: 60)
$COMMON_HELP

Example (PatchFormer's paper setting on a v3-32):
  launch/run.sh --name=patchformer --workdir=gs://BUCKET/workdirs/patchformer -- \\
      --config=configs/patchformer.py --config.data.data_dir=gs://BUCKET/tensorflow_datasets
USAGE
}

WORKDIR=
SYNC=60
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --sync_seconds=*) SYNC=${1#*=} ;;
    --) shift; break ;;
    *) common_flag "$1" || die "unknown flag $1 (see --help; main.py's flags go after --)" ;;
  esac
  shift
done
[[ $WORKDIR == gs://* ]] || die "--workdir=${WORKDIR:-}: a gs:// directory every worker can reach"
[[ $SYNC =~ ^[1-9][0-9]*$ ]] || die "--sync_seconds=$SYNC: a positive number of seconds"
[ $# -gt 0 ] || die "no main.py flags after -- (at least --config=...)"
for flag in "$@"; do
  case "$flag" in
    --workdir=*|--distributed) die "$flag: run.sh passes --workdir and --distributed itself" ;;
  esac
done

workers=$(num_workers)
args=$(printf '%q ' "$@")
logs=$(mktemp -d "${TMPDIR:-/tmp}/ssl_jax_run.XXXXXX")

# The command each worker runs; its exit status is main.py's.
remote_command() {
  local log="$WORKDIR/logs/worker-$1.log"
  cat <<REMOTE
set -uo pipefail
cd ~/ssl_jax && . .venv/bin/activate || exit 1
( while sleep $SYNC; do gcloud storage cp -q ~/ssl_jax_run.log $(printf '%q' "$log") >/dev/null 2>&1; done ) &
sync=\$!
python main.py --distributed --workdir=$(printf '%q' "$WORKDIR") $args 2>&1 | tee ~/ssl_jax_run.log
status=\${PIPESTATUS[0]}
kill \$sync 2>/dev/null
gcloud storage cp -q ~/ssl_jax_run.log $(printf '%q' "$log") >/dev/null 2>&1
exit \$status
REMOTE
}

pids=()
for ((i = 0; i < workers; i++)); do
  : >"$logs/worker-$i.log"
done
for ((i = 0; i < workers; i++)); do
  tpu_vm ssh "$NAME" --worker="$i" --command="$(remote_command "$i")" >"$logs/worker-$i.log" 2>&1 &
  pids+=("$!")
done
echo "run.sh: $workers workers started; logs in $WORKDIR/logs (and $logs); worker 0:" >&2
tail -n +1 -f "$logs/worker-0.log" &
tailer=$!

stop_all() {
  for pid in "${pids[@]}"; do  # each worker's gcloud ssh, then its subshell
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
  tpu_vm ssh "$NAME" --worker=all --command="pkill -f 'python main.py' || true" >/dev/null 2>&1 || true
}
trap 'stop_all; kill $tailer 2>/dev/null; exit 130' INT TERM

status=0
running=$workers
declare -a done_=()
while [ "$running" -gt 0 ]; do
  for ((i = 0; i < workers; i++)); do
    [ -z "${done_[$i]:-}" ] || continue
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      rc=0
      wait "${pids[$i]}" || rc=$?
      done_[i]=1
      running=$((running - 1))
      if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$rc
        echo "run.sh: worker $i exited with status $rc; stopping the others" >&2
        stop_all
      fi
    fi
  done
  [ "$running" -eq 0 ] || sleep "${SSL_JAX_POLL_SECONDS:-2}"
done
sleep 1
kill "$tailer" 2>/dev/null || true
wait "$tailer" 2>/dev/null || true
echo "run.sh: finished with status $status" >&2
exit "$status"
