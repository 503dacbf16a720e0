#!/usr/bin/env bash
# Creates a Cloud TPU VM slice (a v3-32 by default) and waits until it is READY.
# shellcheck source=launch/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
  cat <<USAGE
Usage: launch/create.sh [flags]

Creates the TPU VM slice NAME and returns once it is READY (exit 0), or
fails with gcloud's message (exit 1).

  --accelerator=TYPE   accelerator type (default: $ACCELERATOR; e.g. v4-32, v5litepod-16)
  --version=RUNTIME    TPU runtime version (default: $VERSION)
  --spot               spot capacity (preemptible at any time; launch/supervise.py resumes)
  --reserved           the project's reserved capacity
  --queued             through a queued resource: the request waits in line for
                       capacity instead of failing when there is none now
  --timeout=SECONDS    how long to wait for READY / ACTIVE (default: 3600)
$COMMON_HELP

Example (PatchFormer's v3-32, spot):
  launch/create.sh --name=patchformer --spot --queued
USAGE
}

TIMEOUT=3600
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --accelerator=*) ACCELERATOR=${arg#*=} ;;
    --version=*) VERSION=${arg#*=} ;;
    --spot) PRICING=spot ;;
    --reserved) PRICING=reserved ;;
    --queued) QUEUED=1 ;;
    --timeout=*) TIMEOUT=${arg#*=} ;;
    *) common_flag "$arg" || die "unknown flag $arg (see --help)" ;;
  esac
done
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout=$TIMEOUT: a number of seconds"

pricing=()
case "$PRICING" in
  spot) pricing=(--spot) ;;
  reserved) pricing=(--reserved) ;;
esac

# wait_for COMMAND WANTED: polls COMMAND's output until it is WANTED.
wait_for() {
  local what=$1 wanted=$2 state start=$SECONDS
  while :; do
    state=$($what)
    [ "$state" = "$wanted" ] && return 0
    case "$state" in
      FAILED|SUSPENDED|PREEMPTED|TERMINATED)
        echo "create.sh: $NAME is $state" >&2; return 1 ;;
    esac
    if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
      echo "create.sh: $NAME still $state after ${TIMEOUT}s" >&2; return 1
    fi
    sleep "${SSL_JAX_POLL_SECONDS:-30}"
  done
}

queued_state() {
  queued describe "$NAME" --format='value(state.state)' 2>/dev/null || echo NOT_FOUND
}

if [ "$QUEUED" = 1 ]; then
  queued create "$NAME" --node-id="$NAME" --accelerator-type="$ACCELERATOR" \
    --runtime-version="$VERSION" "${pricing[@]}"
  wait_for queued_state ACTIVE
else
  tpu_vm create "$NAME" --accelerator-type="$ACCELERATOR" --version="$VERSION" "${pricing[@]}"
fi
wait_for tpu_state READY
echo "create.sh: $NAME ($ACCELERATOR, $ZONE) is READY with $(num_workers) workers"
