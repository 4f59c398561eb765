#!/usr/bin/env bash
# Create .venv and install cbam with the CPU torch build pinned (an unpinned
# torch pulls gigabytes of CUDA packages). Idempotent: reuses a working .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# A pip config may list file:// index directories that hold only some packages; pip then warns
# "Location 'file:///...' is ignored" for every other package it looks up. Only those lines are
# dropped: other warnings and errors still show, and pip's exit status is kept.
pip_install() {
  .venv/bin/python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location 'file://.*' is ignored" >&2)
}
stamp=".venv/.cbam-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  pip_install "torch==2.13.0"
  pip_install -e ".[$EXTRAS]" "torch==2.13.0"
  touch "$stamp"
fi
# Fashion-MNIST, the default data, from Debian's package when we can install it.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = "0" ] \
   && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; the demo will use the subset shipped in the package"
fi
