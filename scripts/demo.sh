#!/usr/bin/env bash
# README command 1: set up and run the main job (the built-in demo) on the default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# keep freed memory in glibc's heap instead of returning it to the OS and faulting it in again
# (ResNet-50 inference 13-15 % faster here; 32 MiB is the largest mmap threshold glibc accepts, and
# the trim threshold must not be set alone: docs/PERFORMANCE.md)
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-1073741824}"
exec .venv/bin/python -m cbam demo "$@"
