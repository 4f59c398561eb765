"""The C++ MLP backward (one OpenMP region, sliced matmuls) against the torch-op version in _small."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from cbam.ops import _cpu
from cbam.ops._small import mlp_backward, mlp_forward

K = _cpu.load()
pytestmark = pytest.mark.skipif(K is None, reason=f"C++ kernels not built here: {_cpu.error()}")


def _args(n, c, hid, bias, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    p_avg, p_max, dmc = r(n, c), r(n, c), r(n, c)
    mc = torch.rand(n, c, generator=g, dtype=dtype)
    return dmc, mc, p_avg, p_max, r(hid, c) * 0.2, (r(hid) if bias else None), r(c, hid) * 0.2


@settings(deadline=None, max_examples=25)
@given(n=st.integers(1, 40), c=st.integers(1, 700), hid=st.integers(1, 48), bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), threads=st.sampled_from([1, 2, 3]),
       keep_pre=st.booleans())
def test_matches_torch_ops(n, c, hid, bias, dtype, threads, keep_pre):
    """With the forward's pre-activations (one matmul fewer) or without (recomputed)."""
    dmc, mc, p_avg, p_max, w1, b1, w2 = _args(n, c, hid, bias, dtype, n * 7919 + c * 31 + hid)
    want = mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2)
    pre = mlp_forward(p_avg, p_max, w1, b1, w2, None)[1].contiguous()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # slices along hid and C: more threads than columns must still work
    try:
        got = K.mlp_backward(dmc, mc, p_avg, p_max, w1, torch.empty(0, dtype=dtype) if b1 is None else b1, w2,
                             pre if keep_pre else torch.empty(0, dtype=dtype))
    finally:
        torch.set_num_threads(old)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    names = ["d p_avg", "d p_max", "d w1", "d w2", "d b1", "d b2"]
    for name, u, v in zip(names, got, want):
        if v is None:
            assert u.numel() == 0, name
        else:
            torch.testing.assert_close(u, v, **tol, msg=lambda m: f"{name}: {m}")


def test_inputs_with_grad_fn_and_bad_shapes():
    """Saved op outputs come back in backward attached to the graph; shapes are checked before any thread starts."""
    dmc, mc, p_avg, p_max, w1, b1, w2 = _args(4, 24, 3, True, torch.float32, 0)
    mc_graph = mc.clone().requires_grad_() * 1.0
    e = torch.empty(0)
    got = K.mlp_backward(dmc, mc_graph, p_avg, p_max, w1, b1, w2, e)
    torch.testing.assert_close(got[2], mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2)[2])
    with pytest.raises(RuntimeError, match=r"w1 \(hid, C\), w2 \(C, hid\)"):
        K.mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2[:, :2].contiguous(), e)
    with pytest.raises(RuntimeError, match="must all be"):
        K.mlp_backward(dmc[:2], mc, p_avg, p_max, w1, b1, w2, e)
    with pytest.raises(RuntimeError, match=r"pre must be the forward's \(2, N, hid\)"):
        K.mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2, torch.zeros(2, 4, 2))


@pytest.mark.parametrize("n,c,hid", [(128, 16, 1), (128, 64, 4), (8, 256, 16), (9, 257, 17), (16, 512, 32)])
@pytest.mark.parametrize("keep_pre", [False, True])
def test_both_sides_of_the_small_mlp_loops(n, c, hid, keep_pre):
    """N*C*hid <= 32768 runs plain loops on one thread, above it the parallel BLAS region: both agree
    with the torch ops (ResNet-20's and ResNet-50's first MLPs sit at and below the switch)."""
    dmc, mc, p_avg, p_max, w1, b1, w2 = _args(n, c, hid, True, torch.float64, n + c + hid)
    want = mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2)
    pre = mlp_forward(p_avg, p_max, w1, b1, w2, None)[1].contiguous() if keep_pre else torch.empty(0, dtype=dmc.dtype)
    got = K.mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2, pre)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,c,hid", [(128, 64, 4), (16, 512, 32)])
@pytest.mark.parametrize("bias", [False, True])
def test_weight_gradients_only(n, c, hid, bias):
    """input_grad=False (the per-sample backward, which formed d p per sample): d p_avg and d p_max come
    back empty and the weight gradients are bit-identical to the full call's, on both sides of the
    small-loop switch."""
    dmc, mc, p_avg, p_max, w1, b1, w2 = _args(n, c, hid, bias, torch.float32, n + c)
    b1 = torch.empty(0) if b1 is None else b1
    pre = mlp_forward(p_avg, p_max, w1, b1 if b1.numel() else None, w2, None)[1].contiguous()
    full = K.mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2, pre)
    part = K.mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2, pre, input_grad=False)
    assert part[0].numel() == 0 and part[1].numel() == 0
    for name, u, v in zip(["d w1", "d w2", "d b1", "d b2"], part[2:], full[2:]):
        assert torch.equal(u, v), name
