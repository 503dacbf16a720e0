# shellcheck shell=bash disable=SC2034  # the defaults are read by the scripts that source it
# Shared by the launch/ scripts (sourced, not run): defaults, the common
# flags, and the gcloud calls. Every script runs `gcloud` through $GCLOUD
# (default: gcloud), so the tests can put a fake one in its place.

set -euo pipefail

GCLOUD=${GCLOUD:-gcloud}
NAME=${SSL_JAX_TPU_NAME:-ssl-jax}
ZONE=${SSL_JAX_TPU_ZONE:-europe-west4-a}
PROJECT=${SSL_JAX_TPU_PROJECT:-}
ACCELERATOR=v3-32
VERSION=tpu-ubuntu2204-base
PRICING=on-demand  # on-demand | spot | reserved
QUEUED=0

COMMON_HELP="Common flags:
  --name=NAME          the TPU VM (and queued resource) name (default: \$SSL_JAX_TPU_NAME or ssl-jax)
  --zone=ZONE          (default: \$SSL_JAX_TPU_ZONE or europe-west4-a, where v3 pods are)
  --project=PROJECT    (default: \$SSL_JAX_TPU_PROJECT, else gcloud's configured project)
  -h, --help           this text"

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# common_flag ARG: consumes one of the common flags; returns 1 if ARG is not one.
common_flag() {
  case "$1" in
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    *) return 1 ;;
  esac
}

tpu_vm() {
  local place=(--zone="$ZONE")
  if [ -n "$PROJECT" ]; then place+=(--project="$PROJECT"); fi
  "$GCLOUD" compute tpus tpu-vm "$@" "${place[@]}"
}

queued() {
  local place=(--zone="$ZONE")
  if [ -n "$PROJECT" ]; then place+=(--project="$PROJECT"); fi
  "$GCLOUD" compute tpus queued-resources "$@" "${place[@]}"
}

# The slice's state (READY, CREATING, PREEMPTED, ...), or NOT_FOUND.
tpu_state() {
  tpu_vm describe "$NAME" --format='value(state)' 2>/dev/null || echo NOT_FOUND
}

# The number of workers (hosts) of the slice, from its network endpoints.
num_workers() {
  local ips
  ips=$(tpu_vm describe "$NAME" --format='value(networkEndpoints[].ipAddress)')
  [ -n "$ips" ] || die "TPU VM $NAME in $ZONE has no workers (is it created? launch/status.sh)"
  awk -F';' '{print NF}' <<<"$ips"
}
