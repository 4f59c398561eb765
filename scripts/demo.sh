#!/usr/bin/env bash
# README command 1: set up and run the main job (the built-in demo) on the default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# huge pages for torch's CPU allocator: fresh activations fault in faster on some machines, slower on
# others (a VM that hands free huge pages back to its host; docs/PERFORMANCE.md)
export THP_MEM_ALLOC_ENABLE="${THP_MEM_ALLOC_ENABLE:-1}"
exec .venv/bin/python -m cbam demo "$@"
