#!/usr/bin/env bash
# Installs the repository, at one commit, on every worker of the slice.
# shellcheck source=launch/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPO=$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)
COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)
JAX=$(sed -n 's/^jax==//p' "$ROOT/requirements.lock")

usage() {
  cat <<USAGE
Usage: launch/setup.sh [flags]

On every worker of NAME: clones REPO into ~/ssl_jax at COMMIT (a fresh
clone each time), creates ~/ssl_jax/.venv, installs the package with the
exact versions of requirements.lock, then jax[tpu] at the lock's jax.

  --repo=URL           the repository to clone (default: this checkout's origin: ${REPO:-none})
  --commit=SHA         the commit to check out (default: this checkout's HEAD: ${COMMIT:-none})
  --jax=VERSION        jax[tpu]'s version (default: requirements.lock's: $JAX)
$COMMON_HELP
USAGE
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --repo=*) REPO=${arg#*=} ;;
    --commit=*) COMMIT=${arg#*=} ;;
    --jax=*) JAX=${arg#*=} ;;
    *) common_flag "$arg" || die "unknown flag $arg (see --help)" ;;
  esac
done
[ -n "$REPO" ] || die "no --repo and this checkout has no origin remote"
[[ $COMMIT =~ ^[0-9a-f]{7,40}$ ]] || die "--commit=$COMMIT: a commit hash"
[ -n "$JAX" ] || die "--jax: no jax== line in requirements.lock"

remote="set -euo pipefail
rm -rf ~/ssl_jax
git clone -q $(printf '%q' "$REPO") ~/ssl_jax
cd ~/ssl_jax
git checkout -q $COMMIT
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q -c requirements.lock -e .
pip install -q 'jax[tpu]==$JAX'
python -c 'import jax, ssl_jax; print(jax.__version__)'"

tpu_vm ssh "$NAME" --worker=all --command="$remote"
echo "setup.sh: $NAME runs ssl_jax at $COMMIT with jax[tpu]==$JAX"
