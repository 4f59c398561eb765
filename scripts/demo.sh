#!/usr/bin/env bash
# README command 1: set up and run the main job (the built-in demo) on the default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m cbam demo "$@"
