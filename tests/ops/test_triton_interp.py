"""The Triton kernels (CUDA) checked on the CPU under Triton's interpreter against the torch kernels:
the six memory passes (apply with and without the block tail), over shapes that are and are not multiples of the block sizes, in float32
and half precision, with ties in the argmax. TRITON_INTERPRET must be set before the kernels are
decorated, so they run in a subprocess."""
import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest
import torch

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# hw = 1; 63 (one partial block); 256 (whole blocks); 35 * 33 = 1155 (several blocks, a partial last one)
SHAPES = [(1, 3, 1, 1), (2, 5, 7, 9), (3, 17, 16, 16), (2, 4, 33, 35)]
DTYPES = ["float32", "float16", "bfloat16"]
KERNELS = ["channel_pool", "spatial_pool", "apply", "apply_tail", "bwd_reduce", "row_dot", "input_grad"]


def _inputs(shape, dtype: torch.dtype, ties: bool):
    torch.manual_seed(sum(shape))
    n, c, h, w = shape
    x = torch.randint(0, 2, shape).float() if ties else torch.randn(shape)  # ties: maxima everywhere
    mc = torch.rand(n, c) if not ties else torch.ones(n, c)
    return x.to(dtype), mc, torch.rand(n, h * w), torch.randn(shape).to(dtype)


def _compare(name: str, x, mc, ms, g) -> List[float]:
    """The largest difference of each output of kernel ``name``: Triton (interpreted) vs torch."""
    from cbam.ops import _torch_kernels as TK
    from cbam.ops import _triton_kernels as TR
    n, c, h, w = x.shape
    a = torch.randn(n, h * w).to(x.device)
    if name == "input_grad":
        _, vs, idx_s = TK.spatial_pool(x, mc)
        _, vc, idx_c = TK.channel_pool(x)
        args = (g, mc, ms, a, torch.randn(n, c).to(x.device), idx_s, vs, idx_c, vc.float())
    else:
        args = {"channel_pool": (x,), "spatial_pool": (x, mc), "apply": (x, mc, ms), "apply_tail": (x, mc, ms, g),
                "bwd_reduce": (g, x, mc, ms), "row_dot": (x, a)}[name]
    fn = "apply" if name == "apply_tail" else name  # apply_tail: apply with the block tail, relu(y + identity)
    got, want = getattr(TR, fn)(*args), getattr(TK, fn)(*args)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    out = []
    for u, v in zip(got, want):
        assert u.shape == v.shape, (name, u.shape, v.shape)
        scale = v.double().abs().max().clamp_min(1).item() if v.is_floating_point() else 1.0
        out.append(((u.double() - v.double()).abs().max() / scale).item() if v.numel() else 0.0)
    return out


def main() -> None:
    """Run in the subprocess: prints {"kernel shape dtype ties": [max error per output]} as JSON."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    res: Dict[str, List[float]] = {}
    for shape in SHAPES:
        for dt in DTYPES:
            for ties in (False, True):
                x, mc, ms, g = _inputs(shape, getattr(torch, dt), ties)
                for name in KERNELS:
                    res[f"{name} {shape} {dt} {ties}"] = _compare(name, x, mc, ms, g)
    print(json.dumps(res))


@pytest.fixture(scope="module")
def errors() -> Dict[str, List[float]]:
    import cbam
    # the same cbam as this process imported (a checkout's src/ or an installed copy), and the tests
    path = [ROOT, os.path.dirname(os.path.dirname(cbam.__file__)), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(path))
    code = "from tests.ops.test_triton_interp import main; main()"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


# float32 sums of a few hundred terms in different orders; half-precision inputs, float32 math
TOL = {"float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-5}
# apply and input_grad round their result to the input dtype, where one rounding step may differ (on a GPU
# also where Triton fuses a multiply and an add into one FMA)
ROUNDED_KERNELS = ("apply", "apply_tail", "input_grad")
ROUNDED = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}


@pytest.mark.parametrize("name", KERNELS)
def test_triton_kernel_matches_torch(errors, name):
    checked = {k: v for k, v in errors.items() if k.startswith(name + " ")}
    assert len(checked) == len(SHAPES) * len(DTYPES) * 2
    for key, errs in checked.items():
        dt = key.split()[-2]
        tol = max(TOL[dt], ROUNDED[dt]) if name in ROUNDED_KERNELS else TOL[dt]
        assert max(errs) <= tol, (key, errs)
