"""The fused CBAM op against the reference (cbam.functional): values, gradients, BN statistics,
over a hypothesis-drawn shape/dtype/layout matrix; gradcheck; registration for compile/export."""
import pytest
import torch
from hypothesis import example, given, strategies as st

import cbam
from cbam import functional as Fn
from cbam.ops import backend_name, fused_cbam, fused_cbam_with_gates
from cbam.ops import _torch_kernels as TK
from tests.helpers import randomize_, rel_err as _rel

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 3e-2),
       torch.float16: (5e-3, 5e-3)}


def _pair(preset, c, dtype, train, **kw):
    ref = randomize_(cbam.CBAM.from_preset(preset, c, impl="reference", **kw)).train(train)
    fus = cbam.CBAM.from_preset(preset, c, impl="fused", **kw).train(train)
    fus.load_state_dict(ref.state_dict())
    return ref, fus


@given(n=st.integers(1, 64), c=st.integers(1, 2048), h=st.integers(1, 112), w=st.integers(1, 112),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
       channels_last=st.booleans(), preset=st.sampled_from(["paper", "official", "timm"]), train=st.booleans(),
       k=st.sampled_from([3, 7]))
# one channel: every spatial max route lands on it, HW terms summed into one value (float's sequential
# sum drifted to 2.4e-4 relative on this example; the kernels now sum the routes in double)
@example(n=64, c=1, h=109, w=53, dtype=torch.float32, channels_last=False, preset="paper", train=False, k=3)
def test_matches_reference(n, c, h, w, dtype, channels_last, preset, train, k):
    if n * c * h * w > 600_000:  # keep each example to a few ms on 2 cores
        c = max(1, 600_000 // (n * h * w))
    if train and preset != "paper" and n * h * w == 1:
        train = False  # BN needs more than one value per batch
    torch.manual_seed(n * 1_000_003 + c * 1009 + h * 31 + w)  # the same data when hypothesis replays
    ref, fus = _pair(preset, c, dtype, train, kernel_size=k)
    low = dtype in (torch.bfloat16, torch.float16)
    ref_lp = None
    if low:  # the reference in the same low precision: the fused op must be no worse than it
        ref_lp = cbam.CBAM.from_preset(preset, c, impl="reference", kernel_size=k).train(train)
        ref_lp.load_state_dict(ref.state_dict())
        ref_lp.to(dtype)
    x = torch.randn(n, c, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(n, c, h, w)

    def run(m, xdtype):
        xx = x.to(dtype).to(xdtype).requires_grad_()
        y = m(xx)
        (y.to(g.dtype if xdtype != torch.float64 else torch.float64) * g.to(y.dtype).to(
            torch.float64 if xdtype == torch.float64 else torch.float32)).sum().backward()
        return y, xx.grad, [p.grad for p in m.parameters()], list(m.buffers())

    # the oracle: the reference in float64 on the same (rounded) input
    y_o, gx_o, gp_o, b_o = run(ref.double(), torch.float64)
    if dtype != torch.float64:
        fus.float()
    y, gx, gp, b = run(fus, dtype)
    assert y.dtype == dtype and y.shape == x.shape
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)  # layout preserved
    else:
        assert y.is_contiguous()
    base = run(ref_lp, dtype) if low else None
    lim = {torch.float64: 1e-7, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}[dtype]

    def check(got, want, i, what):
        err = _rel(got, want)
        # parameter gradients are sums over the whole batch; in fp16/bf16 (g is rounded too) the BN bias's
        # sum cancels to a small value, so its relative error gets 3x the precision's limit
        floor = lim if base is None or i < 2 else 3 * lim
        allowed = floor if base is None else max(floor, 3 * _rel(base[i] if i < 2 else base[2][what], want))
        assert err <= allowed, (what, err, allowed)

    check(y, y_o, 0, "y")
    check(gx, gx_o, 1, "dx")
    names = [nm for nm, _ in ref.named_parameters()]
    for j, (a, bb) in enumerate(zip(gp, gp_o)):
        if bb.abs().max() > 0:
            check(a, bb, 2, j) if base is not None else check(a, bb, 2, names[j])
    for (name, br), bf in zip(ref.named_buffers(), b):
        torch.testing.assert_close(bf.double(), br.double(), rtol=1e-3 if low else 1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("preset", ["paper", "official"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(preset, channels_last):
    ref = randomize_(cbam.CBAM.from_preset(preset, 12, impl="fused", dtype=torch.float64)).eval()
    ch, sp = ref.channel, ref.spatial
    bn = sp.bn
    x = torch.randn(2, 12, 5, 4, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()

    def f(x, w1, w2, wc, *bnp):
        args = (bnp[0], bnp[1], bn.running_mean, bn.running_var, False, 0.1, 1e-5, True) if bnp else ()
        return fused_cbam(x, w1, ch.fc1.bias, w2, ch.fc2.bias, wc, None, *args,
                          order=sp.pool_order)
    params = [ch.fc1.weight, ch.fc2.weight, sp.conv.weight] + ([bn.weight, bn.bias] if bn is not None else [])
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_gradcheck_training_bn_and_gate_outputs():
    m = randomize_(cbam.CBAM.from_preset("official", 8, impl="fused", dtype=torch.float64)).train()
    ch, sp, bn = m.channel, m.spatial, m.spatial.bn
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64, requires_grad=True)

    def f(x, w1, b1, w2, b2, wc, bw, bb):
        y, mc, ms = fused_cbam_with_gates(x, w1, b1, w2, b2, wc, None, bw, bb, None, None, True, 0.1, 1e-5, True,
                                          order="max_avg")
        return y, mc, ms  # gradients through the returned gates too
    assert torch.autograd.gradcheck(f, (x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight,
                                        bn.weight, bn.bias), eps=1e-6, atol=1e-6)


def test_same_signature_as_reference():
    m = randomize_(cbam.CBAM(16, dtype=torch.float64))
    ch, sp = m.channel, m.spatial
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    a = Fn.cbam(x, ch.fc1.weight, None, ch.fc2.weight, None, sp.conv.weight)
    b = fused_cbam(x, ch.fc1.weight, None, ch.fc2.weight, None, sp.conv.weight)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="channel_first"):
        fused_cbam(x, ch.fc1.weight, None, ch.fc2.weight, None, sp.conv.weight, arrangement="parallel")


@pytest.mark.parametrize("channels_last", [False, True])
def test_empty_batch_like_reference(channels_last):
    """N = 0 gives an empty output and gradient, as cbam.functional does, not an error."""
    m = cbam.CBAM(16)
    ch, sp = m.channel, m.spatial
    x = torch.randn(0, 16, 5, 5)
    x = (x.to(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    args = (ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight)
    y = fused_cbam(x, *args)
    assert y.shape == Fn.cbam(x, *args).shape and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("c, hid", [(16, 1), (40, 3), (67, 5), (96, 19), (64, 32), (80, 48), (272, 136)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_per_sample_mlp_hidden_widths(c, hid, channels_last):
    """The per-sample kernels' channel MLP and its input gradient in float32 against float64 reference
    math, at hidden widths that end in a partial vector, take one to three whole vectors with two or
    four sets of partial sums, or (136) pass the vector loops' 128, and channel counts that end in a
    partial vector (40, 67) or take whole blocks of 64 (64, 272)."""
    torch.manual_seed(c + hid)
    ref = randomize_(cbam.CBAM(c, hidden_channels=hid, impl="reference"))
    fus = cbam.CBAM(c, hidden_channels=hid, impl="fused")
    fus.load_state_dict(ref.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, c, 5, 6).contiguous(memory_format=fmt)
    g = torch.randn(4, c, 5, 6)
    assert fus.uses_fused(x)
    got, want = [], []
    for m, out, dt in ((fus, got, torch.float32), (ref.double(), want, torch.float64)):
        xi = x.to(dt).detach().clone().requires_grad_()
        (m(xi) * g.to(dt)).sum().backward()
        out += [m(xi).detach(), xi.grad, m.channel.fc1.weight.grad, m.channel.fc2.weight.grad]
    for what, a, b in zip(("y", "dx", "d fc1", "d fc2"), got, want):
        assert _rel(a, b) <= 2e-5, (what, _rel(a, b))


def test_kernel_sets_agree():
    """C++ kernels (when built) against the torch kernels on every pass."""
    from cbam.ops import _cpu
    K = _cpu.load()
    if K is None:
        pytest.skip(f"C++ kernels not built here: {_cpu.error()}")
    torch.manual_seed(0)
    x, g = torch.randn(3, 37, 11, 13), torch.randn(3, 37, 11, 13)
    mc, ms, a = torch.rand(3, 37), torch.rand(3, 143), torch.randn(3, 143)
    for u, v in zip(K.channel_pool(x), TK.channel_pool(x)):
        torch.testing.assert_close(u, v)
    for u, v in zip(K.spatial_pool(x, mc), TK.spatial_pool(x, mc)):
        torch.testing.assert_close(u, v)
    torch.testing.assert_close(K.apply(x, mc, ms), TK.apply(x, mc, ms))
    for u, v in zip(K.bwd_reduce(g, x, mc, ms), TK.bwd_reduce(g, x, mc, ms)):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(K.row_dot(x, a), TK.row_dot(x, a), rtol=1e-4, atol=1e-4)
    idx_s, idx_c = torch.randint(0, 37, (3, 143), dtype=torch.int32), torch.randint(0, 143, (3, 37), dtype=torch.int32)
    vs, vc, b = torch.randn(3, 143), torch.randn(3, 37), torch.randn(3, 37)
    torch.testing.assert_close(K.input_grad(g, mc, ms, a, b, idx_s, vs, idx_c, vc),
                               TK.input_grad(g, mc, ms, a, b, idx_s, vs, idx_c, vc))


@pytest.mark.parametrize("c", [1, 3, 8, 37])
@pytest.mark.parametrize("hw", [(3, 5), (4, 6), (7, 7), (1, 17), (5, 13), (14, 14)])
def test_pixel_maxima_ties_route_to_the_first_channel(c, hw):
    """The per-pixel pooling over channels (vector blocks of 16 and 8 pixels plus a scalar tail, and
    four channels per step plus a remainder) on integer-valued input with a unit gate, so a pixel's
    maximum sits in several channels: the first channel wins, as ``max(dim)``; the maxima do not depend
    on whether the routes are kept (the sums may round differently)."""
    from cbam.ops import _cpu
    K = _cpu.load()
    if K is None:
        pytest.skip(f"C++ kernels not built here: {_cpu.error()}")
    torch.manual_seed(c * 1000 + hw[0] * 100 + hw[1])
    x = torch.randint(-3, 4, (3, c, *hw)).float()
    x[0, :, 0, 0] = -7.0  # a pixel where every channel ties
    mc = torch.ones(3, c)
    mc[2] = torch.rand(c) + 0.5  # and a sample with a real gate
    avg, mx, idx = K.spatial_pool(x, mc, True)
    want_avg, want_max, want_idx = TK.spatial_pool(x, mc)
    torch.testing.assert_close(avg, want_avg)
    torch.testing.assert_close(mx, want_max, rtol=0, atol=0)
    assert torch.equal(idx, want_idx)
    avg2, mx2, _ = K.spatial_pool(x, mc, False)
    torch.testing.assert_close(avg2, avg)
    assert torch.equal(mx2, mx)


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (4, 4), (1, 17), (7, 7), (8, 8), (5, 13), (14, 14)])
def test_tied_maxima_route_to_the_first(hw):
    """Integer-valued float32 input: most rows have their maximum several times, in several SIMD lanes.
    The channel-max argmax (in-register per lane in the AVX-512 kernel, a scan elsewhere) must pick
    the first position like ``max(dim)``, for row lengths below, at and around the 16-lane chunks."""
    from cbam.ops import _cpu
    K = _cpu.load()
    if K is None:
        pytest.skip(f"C++ kernels not built here: {_cpu.error()}")
    torch.manual_seed(hw[0] * 100 + hw[1])
    x = torch.randint(-3, 4, (4, 40, *hw)).float()
    x[0, 0] = -7.0  # a row whose every element ties
    avg, mx, idx = K.channel_pool(x)
    want_max, want_idx = x.flatten(2).max(2)
    torch.testing.assert_close(mx, want_max)
    torch.testing.assert_close(avg, x.flatten(2).mean(2))
    assert torch.equal(idx.long(), want_idx)
    # the per-sample forward with need_idx, through the module: gradients equal the reference's
    ref, fus = _pair("paper", 40, torch.float32, False)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(x)
    (ref(xr) * g).sum().backward()
    (fus(xf) * g).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_saved_for_backward_is_lean():
    """What autograd keeps: x plus small tensors (<= 1.1x the input's bytes at ResNet shapes)."""
    x = torch.randn(4, 256, 28, 28, requires_grad=True)
    m = cbam.CBAM(256, impl="fused")
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    seen, total = set(), 0
    for t in saved:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    assert total <= 1.1 * x.numel() * x.element_size(), total / (x.numel() * 4)
    y.sum().backward()


def test_compile_fullgraph_and_opcheck():
    torch._dynamo.reset()
    m = randomize_(cbam.CBAM.from_preset("official", 16, impl="fused")).eval()
    x = torch.randn(2, 16, 7, 5)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(cm(x), m(x))
    ch, sp, bn = m.channel, m.spatial, m.spatial.bn
    args = (x.requires_grad_(), ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, None,
            bn.weight, bn.bias, bn.running_mean, bn.running_var, True, False, 1e-5, True, True, None)
    torch.library.opcheck(torch.ops.cbam.fused_cbam_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_auto_chooses_and_reports():
    m = cbam.CBAM(16)
    x = torch.randn(1, 16, 4, 4)
    assert m.uses_fused(x) == (backend_name(x) == "cpp")
    assert not cbam.CBAM(16, impl="reference").uses_fused(x)
    assert not cbam.CBAM(16, arrangement="parallel").uses_fused(x)
    assert "(reference only)" in repr(cbam.CBAM(16, pool_types=("avg",)))
    m = cbam.CBAM(16).eval()
    s = torch.jit.script(m)  # scripting falls back to the reference path
    torch.testing.assert_close(s(x), m(x))


@pytest.mark.parametrize("kernels", ["torch", "auto"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("backward_inside", [False, True])
def test_autocast_bf16_training_matches_reference(monkeypatch, kernels, layout, backward_inside):
    """Under bf16 autocast the op takes the autocast conv's bf16 output and keeps its MLP in float32,
    also on the torch kernels (CUDA channels_last; a CPU without the C++ kernels),
    where autocast would otherwise round the MLP's matmuls to bf16 and the backward met mixed dtypes."""
    import cbam.ops._backward as B
    import cbam.ops.fused as FU
    if kernels == "torch":
        monkeypatch.setattr(FU, "kernels_for", lambda x: TK)
        monkeypatch.setattr(B, "kernels_for", lambda x: TK)
    ref, fus = _pair("official", 32, torch.float32, True)
    x = torch.randn(3, 32, 9, 7).to(torch.bfloat16).contiguous(memory_format=layout)
    out = []
    for m in (ref, fus):
        xx = x.clone().requires_grad_()
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xx)
            if backward_inside:
                y.float().square().sum().backward()
        if not backward_inside:
            y.float().square().sum().backward()
        out.append((y, xx.grad, m.channel.fc1.weight.grad, m.spatial.conv.weight.grad))
    (y1, gx1, gw1, gc1), (y2, gx2, gw2, gc2) = out
    assert y2.dtype == torch.bfloat16 and gx2.dtype == torch.bfloat16 and gw2.dtype == torch.float32
    assert _rel(y2, y1) < 2e-2 and _rel(gx2, gx1) < 5e-2
    assert _rel(gw2, gw1) < 5e-2 and _rel(gc2, gc1) < 5e-2


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_ops_fake_match_real_for_channels_last_weights(layout):
    """model.to(memory_format=channels_last) makes the conv weight channels_last: the ops' fakes
    (what torch.compile plans with) must give their outputs the strides the real ops return,
    or inductor's stride assertions stop a compiled training step."""
    m = randomize_(cbam.CBAM(16, impl="fused")).to(memory_format=torch.channels_last)
    ch, sp = m.channel, m.spatial
    x = torch.randn(2, 16, 7, 5).contiguous(memory_format=layout)
    ident = torch.randn_like(x)
    args = (x, ch.fc1.weight.detach(), None, ch.fc2.weight.detach(), None, sp.conv.weight.detach(), None, None, None,
            None, None, False, False, 1e-5, False, True, ident)
    torch.library.opcheck(torch.ops.cbam.fused_cbam_fwd.default, args, test_utils=("test_faketensor",))
    y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre = torch.ops.cbam.fused_cbam_fwd.default(*args)
    bwd_args = (torch.randn_like(y), torch.zeros_like(mc), torch.zeros_like(ms), x, y, mc, ms, p_avg, p_max, idx_c,
                sd, idx_s, bmean, bvar, pre, args[1], None, args[3], None, args[5], None, None, False, False, 1e-5,
                False)
    torch.library.opcheck(torch.ops.cbam.fused_cbam_bwd.default, bwd_args, test_utils=("test_faketensor",))
