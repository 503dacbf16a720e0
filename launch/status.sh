#!/usr/bin/env bash
# The slice's state, and the end of each worker's log in the workdir.
# shellcheck source=launch/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
  cat <<USAGE
Usage: launch/status.sh [--workdir=gs://BUCKET/DIR] [--lines=N] [--worker=I] [flags]

Prints NAME's state (READY, CREATING, PREEMPTED, ... or NOT_FOUND) and
number of workers, then, with --workdir, the last N lines of each
worker's log (DIR/logs/worker-I.log, written by launch/run.sh), or of
worker I's only.

  --workdir=DIR        the run's workdir
  --lines=N            lines of each log (default: 20)
  --worker=I           one worker's log only
$COMMON_HELP
USAGE
}

WORKDIR=
LINES=20
WORKER=
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --workdir=*) WORKDIR=${arg#*=} ;;
    --lines=*) LINES=${arg#*=} ;;
    --worker=*) WORKER=${arg#*=} ;;
    *) common_flag "$arg" || die "unknown flag $arg (see --help)" ;;
  esac
done
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines=$LINES: a number"
[[ -z $WORKER || $WORKER =~ ^[0-9]+$ ]] || die "--worker=$WORKER: a worker number"

state=$(tpu_state)
if [ "$state" = NOT_FOUND ]; then
  echo "$NAME ($ZONE): NOT_FOUND"
else
  echo "$NAME ($ZONE): $state, $(num_workers) workers"
fi
[ -n "$WORKDIR" ] || exit 0
logs=$("$GCLOUD" storage ls "$WORKDIR/logs/" 2>/dev/null || true)
[ -n "$logs" ] || { echo "no logs in $WORKDIR/logs yet"; exit 0; }
pattern="*/worker-${WORKER:-*}.log"
while read -r log; do
  # shellcheck disable=SC2053  # a glob on purpose
  [[ $log == $pattern ]] || continue
  echo "== $log"
  "$GCLOUD" storage cat "$log" | tail -n "$LINES"
done <<<"$logs"
