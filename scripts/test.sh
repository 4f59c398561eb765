#!/usr/bin/env bash
# README command 2: set up and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
.venv/bin/python -m pytest tests "$@"
# The kernel tests again, built for the x86 vector family this CPU's native build leaves out (the AVX2
# kernels on an AVX-512 machine, the generic loops on an AVX2 one), so both families run somewhere in
# every test run, not only compile. CBAM_SKIP_OTHER_ISA=1 skips this pass.
other="$(.venv/bin/python -c 'from cbam.ops._cpuinfo import other_runnable_march as m; print(m() or "")')"
if [ -n "$other" ] && [ -z "${CBAM_SKIP_OTHER_ISA:-}" ]; then
  echo "== the kernel tests again, built with CBAM_CPU_MARCH=$other"
  CBAM_CPU_MARCH="$other" .venv/bin/python -m pytest tests/ops "$@"
fi
