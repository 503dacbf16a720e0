#!/usr/bin/env bash
# Deletes the TPU VM slice (and its queued resource, if it came from one).
# shellcheck source=launch/lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
  cat <<USAGE
Usage: launch/delete.sh [flags]

Deletes the TPU VM NAME, or with --queued its queued resource and the VM
in it. Checkpoints and logs in the workdir's bucket are not touched.

  --queued             the slice came from launch/create.sh --queued
$COMMON_HELP
USAGE
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --queued) QUEUED=1 ;;
    *) common_flag "$arg" || die "unknown flag $arg (see --help)" ;;
  esac
done

if [ "$QUEUED" = 1 ]; then
  queued delete "$NAME" --force --quiet
else
  tpu_vm delete "$NAME" --quiet
fi
