"""The C++ kernels, compiled on first use with the local gcc and cached by torch."""
import logging
import os
import threading
from types import ModuleType
from typing import Optional

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_mod: Optional[ModuleType] = None
_failed: Optional[str] = None


def load() -> Optional[ModuleType]:
    """The compiled module, or None when it cannot be built here (the reason is in :func:`error`)."""
    global _mod, _failed
    if _mod is not None or _failed is not None:
        return _mod
    if os.environ.get("CBAM_DISABLE_CPP"):
        _failed = "disabled by CBAM_DISABLE_CPP"
        return None
    with _lock:
        if _mod is None and _failed is None:
            try:
                from torch.utils.cpp_extension import load as _load
                d = os.path.join(os.path.dirname(__file__), "csrc")
                src = [os.path.join(d, f) for f in ("cbam_cpu.cpp", "cbam_sample.cpp")]
                # -march=native is safe: the extension is compiled on the machine that runs it.
                # The relaxed-associativity flags let gcc vectorise the float reductions.
                flags = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fassociative-math",
                         "-fno-signed-zeros", "-fno-trapping-math"]
                _mod = _load("cbam_cpu_kernels", src, extra_cflags=flags, extra_ldflags=["-fopenmp"],
                             verbose=False)
            except Exception as e:  # no compiler, no headers, ...: fall back to torch kernels
                _failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                _log.warning("cbam: C++ kernels unavailable (%s); using torch kernels", _failed)
    return _mod


def error() -> Optional[str]:
    return _failed
