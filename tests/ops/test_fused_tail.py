"""The fused residual-block tail ``relu(cbam(x) + identity)`` and the channels_last / low-precision
per-sample kernels: values and gradients against the reference, float64 gradcheck, the ResNet
blocks that use the tail, and the C++ entry points' input checks."""
import pytest
import torch

import cbam
from cbam import functional as Fn
from cbam.models import create_model
from cbam.ops import _cpu, fused_cbam_tail, fused_cbam_tail_with_gates
from cbam.ops import _forward as FW
from cbam.ops import fused
from tests.helpers import randomize_, rel_err as _rel

LIM = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _cpp():
    K = _cpu.load()
    if K is None:
        pytest.skip(f"C++ kernels not built here: {_cpu.error()}")
    return K


def _weights(m):
    ch, sp = m.channel, m.spatial
    bn = sp.bn
    w = dict(fc1_weight=ch.fc1.weight, fc1_bias=ch.fc1.bias, fc2_weight=ch.fc2.weight, fc2_bias=ch.fc2.bias,
             conv_weight=sp.conv.weight, order=sp.pool_order)
    if bn is not None:
        w.update(bn_weight=bn.weight, bn_bias=bn.bias, bn_running_mean=bn.running_mean.clone(),
                 bn_running_var=bn.running_var.clone(), bn_training=m.training, use_bn=True)
    return w


def _run(fn, m, x, ident, g, dtype, layout):
    """Forward and backward of fn(x, identity, **weights) with x, identity in dtype/layout; the
    reference runs in float64 on the same rounded inputs."""
    xx = x.to(dtype).clone(memory_format=layout).requires_grad_()
    ii = ident.to(dtype).clone(memory_format=layout).requires_grad_()
    params = [p for p in m.parameters()]
    for p in params:
        p.grad = None
    y = fn(xx, ii, **_weights(m))
    (y.to(g.dtype) * g).sum().backward()
    return y, xx.grad, ii.grad, [p.grad.clone() for p in params]


def _reference_tail(x, identity, **w):
    return Fn.cbam_tail(x, identity, **w)


@pytest.mark.parametrize("preset,train", [("paper", True), ("official", False), ("official", True), ("timm", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("n", [4, 3])  # 4: per sample on 1-2 threads; 3: NCHW takes the three-pass path
def test_tail_matches_reference(preset, train, dtype, layout, n):
    """Against the reference in float64 on the same rounded inputs. In bf16/fp16 the reference run in
    that precision sets the bar too (relu's mask flips near 0): the fused op must be no worse than 3x it."""
    _cpp()
    torch.manual_seed(7)
    m = randomize_(cbam.CBAM.from_preset(preset, 24, dtype=torch.float64)).train(train)
    x, ident = torch.randn(n, 24, 6, 9, dtype=torch.float64), torch.randn(n, 24, 6, 9, dtype=torch.float64)
    g = torch.randn(n, 24, 6, 9, dtype=torch.float64)
    want = _run(_reference_tail, m, x.to(dtype).double(), ident.to(dtype).double(), g, torch.float64,
                torch.contiguous_format)
    low = dtype in (torch.bfloat16, torch.float16)
    base = _run(_reference_tail, m.to(dtype), x, ident, g.to(dtype), dtype, layout) if low else None
    m.to(torch.float32 if dtype != torch.float64 else dtype)
    got = _run(fused_cbam_tail, m, x, ident, g.float() if dtype != torch.float64 else g, dtype, layout)
    assert got[0].dtype == dtype and got[0].is_contiguous(memory_format=layout)
    assert (got[0] >= 0).all()

    def check(i, j=None):
        a, b = (got[i], want[i]) if j is None else (got[i][j], want[i][j])
        allowed = LIM[dtype] * (1 if i < 3 else 10)
        if base is not None:
            allowed = max(allowed, 3 * _rel(base[i] if j is None else base[i][j], b))
        assert _rel(a, b) <= allowed, ("y, dx, d identity, parameters"[i], j, _rel(a, b), allowed)
    for i in range(3):
        check(i)
    for j in range(len(want[3])):
        check(3, j)


def test_same_signature_as_the_reference_tail():
    m = randomize_(cbam.CBAM(8, dtype=torch.float64))
    x, ident = torch.randn(2, 8, 5, 5, dtype=torch.float64), torch.randn(2, 8, 5, 5, dtype=torch.float64)
    args = (m.channel.fc1.weight, None, m.channel.fc2.weight, None, m.spatial.conv.weight)
    want = torch.relu(Fn.cbam(x, *args) + ident)
    torch.testing.assert_close(Fn.cbam_tail(x, ident, *args), want, rtol=0, atol=0)
    torch.testing.assert_close(fused_cbam_tail(x, ident, *args), want)


def test_identity_gradient_is_relu_routed():
    """d identity = g where the output is positive and exactly 0 where relu clipped it."""
    torch.manual_seed(3)
    m = randomize_(cbam.CBAM(8, dtype=torch.float64))
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    ident = torch.randn(4, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    y = fused_cbam_tail(x, ident, **{k: v for k, v in _weights(m).items()})
    g = torch.randn_like(y)
    y.backward(g)
    assert (y == 0).any() and (y > 0).any()
    torch.testing.assert_close(ident.grad, g * (y > 0), rtol=0, atol=0)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("preset", ["paper", "official"])
def test_tail_gradcheck_float64(layout, preset):
    m = randomize_(cbam.CBAM.from_preset(preset, 6, dtype=torch.float64)).train(preset == "official")
    ch, sp = m.channel, m.spatial
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    ident = torch.randn(2, 6, 4, 5, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    bn = sp.bn

    def f(x, ident, w1, w2, wc, *bnp):
        kw = dict(bn_weight=bnp[0], bn_bias=bnp[1], bn_training=True, use_bn=True) if bnp else {}
        y, mc, ms = fused_cbam_tail_with_gates(x, ident, w1, ch.fc1.bias, w2, ch.fc2.bias, wc, order=sp.pool_order,
                                               **kw)
        return y, mc, ms
    params = [ch.fc1.weight, ch.fc2.weight, sp.conv.weight] + ([bn.weight, bn.bias] if bn is not None else [])
    assert torch.autograd.gradcheck(f, (x, ident, *params), eps=1e-6, atol=1e-6)


def _net(block, preset, **kw):
    if block == "basic":
        return create_model("resnet20", in_chans=2, num_classes=5, attention=preset, **kw)
    from cbam.models.resnet import Bottleneck, ResNet  # a small two-stage Bottleneck network
    return ResNet(Bottleneck, [1, 2], num_classes=5, in_chans=2, widths=(8, 16), stem="cifar", attention=preset, **kw)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("preset", ["cbam", "cbam_official"])
def test_blocks_use_the_tail_and_match_the_reference_network(block, layout, preset, monkeypatch):
    """BasicBlock (resnet20) and Bottleneck with the fused tail against the same network
    on the reference path, in float64: logits, every parameter gradient and the BN statistics."""
    _cpp()
    torch.manual_seed(5)
    a = _net(block, preset).double().to(memory_format=layout)
    b = _net(block, preset, attention_kwargs={"impl": "reference"}).double()
    for mod in a.modules():
        if isinstance(mod, cbam.CBAM):
            randomize_(mod)
    b.load_state_dict(a.state_dict())
    calls = []

    def spy(real):  # the module's two routes into the op, both (x, identity, ...): did a call run with a tail?
        def run(*args, **kwargs):
            y = real(*args, **kwargs)
            if y is not None:  # run_eager's None: the call went on to run_checked
                calls.append(args[1] is not None)
            return y
        return run

    monkeypatch.setattr(fused, "run_eager", spy(fused.run_eager))
    monkeypatch.setattr(fused, "run_checked", spy(fused.run_checked))
    x = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    ya = a(x.contiguous(memory_format=layout))
    monkeypatch.undo()
    yb = b(x)
    assert calls and all(calls), "every block should form its tail in the fused op"
    torch.testing.assert_close(ya, yb, rtol=1e-9, atol=1e-9)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (n1, p1), (_, p2) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-7, atol=1e-9, msg=n1)
    for (n1, b1), (_, b2) in zip(a.named_buffers(), b.named_buffers()):
        torch.testing.assert_close(b1, b2, msg=n1)


def test_plain_and_se_blocks_are_unchanged():
    """Networks whose attention has no fused tail keep relu(attn(out) + identity)."""
    torch.manual_seed(1)
    for att in (None, "se"):
        m = create_model("resnet20", in_chans=1, num_classes=3, attention=att).eval()
        blk = m.layer1[0]
        x = torch.randn(2, 16, 8, 8)
        out = blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x)))))
        torch.testing.assert_close(blk(x), torch.relu(blk.attn(out) + x))


def test_forward_hooks_on_the_attention_still_fire():
    m = create_model("resnet20", in_chans=1, num_classes=3, attention="cbam").eval()
    seen = []
    m.layer2[1].attn.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    with torch.no_grad():
        m(torch.randn(2, 1, 16, 16))
    assert seen == [torch.Size([2, 32, 8, 8])]


def test_autocast_bf16_channels_last_keeps_dtype_and_layout():
    """Under CPU autocast the module gets and returns what the convolutions use (bf16, channels_last)."""
    _cpp()
    m = create_model("resnet20", in_chans=1, num_classes=3, attention="cbam").to(memory_format=torch.channels_last)
    seen = []
    for mod in m.modules():
        if isinstance(mod, cbam.CBAM):
            mod.register_forward_pre_hook(lambda mod, inp: seen.append((inp[0].dtype, FW.backend_name(inp[0]))))
    x = torch.randn(4, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16 and seen and all(s == (torch.bfloat16, "cpp") for s in seen)


def test_entry_points_check_shapes_and_indices():
    K = _cpp()
    m = randomize_(cbam.CBAM(8))
    x = torch.randn(2, 8, 4, 4)
    w = _weights(m)
    w1, w2, wc = w["fc1_weight"].detach(), w["fc2_weight"].detach(), w["conv_weight"].detach().view(2, 7, 7)
    e = torch.empty(0)
    with pytest.raises(RuntimeError, match="w1 must be"):
        K.forward_samples(x, w1[:, :5].contiguous(), e, w2, e, wc, 0.0, 1.0, 0.0, False, True, True, 1, e)
    with pytest.raises(RuntimeError, match="odd"):
        K.forward_samples(x, w1, e, w2, e, torch.zeros(2, 6, 6), 0.0, 1.0, 0.0, False, True, True, 1, e)
    with pytest.raises(RuntimeError, match="identity"):
        K.forward_samples(x, w1, e, w2, e, wc, 0.0, 1.0, 0.0, False, True, True, 1, torch.randn(2, 8, 4, 5))
    y, mc, ms, pa, pm, ic, sd, is_, pre, bmean, bvar = K.forward_samples(x, w1, e, w2, e, wc, 0.0, 1.0, 0.0, False, True,
                                                                        True, 1, e)
    assert ms.shape == (2, 1, 4, 4) and bmean.tolist() == bvar.tolist() == [0.0]
    ms = ms.view(2, 16)
    bad = is_.clone()
    bad[0, 0] = 8  # a channel index past C: must not write outside dx
    with pytest.raises(RuntimeError, match="idx_s holds indices outside"):
        K.backward_samples(torch.randn_like(x), e, x, mc, ms, pa, pm, ic, bad, torch.zeros_like(mc),
                           torch.zeros_like(ms), w1, e, w2, wc, sd, 1.0, False, e, e)


def test_backward_takes_the_hidden_masks_from_the_forward_pre_activations():
    """The per-sample backward masks the MLP's hidden ReLUs by the signs of the forward's saved
    pre-activations (the values the weight gradients use), not by a second computation that may round
    the other way near 0: the true pre-activations give the recomputed masks' dx exactly, and negated
    ones (every mask off) remove exactly the MLP's part of dx, a constant per channel away from the
    channel max routes."""
    K = _cpp()
    m = randomize_(cbam.CBAM(16, 4))
    x = torch.randn(2, 16, 5, 5)
    w = _weights(m)
    w1, w2, wc = w["fc1_weight"].detach(), w["fc2_weight"].detach(), w["conv_weight"].detach().view(2, 7, 7)
    e = torch.empty(0)
    y, mc, ms, pa, pm, ic, sd, is_, pre, _, _ = K.forward_samples(x, w1, e, w2, e, wc, 0.0, 1.0, 0.0, False, True,
                                                                   True, 1, e)
    g = torch.randn_like(x)

    def dx(pre_arg):
        return K.backward_samples(g, e, x, mc, ms.view(2, 25), pa, pm, ic, is_, e, e, w1, e, w2, wc, sd, 1.0, False,
                                  e, pre_arg)[0]

    base = dx(e)
    assert torch.equal(dx(pre), base)
    off = dx(-pre.abs() - 1)
    diff = (base - off).view(2, 16, 25)
    assert diff.abs().max() > 1e-6  # the MLP's part is there
    routes = torch.zeros(2, 16, 25, dtype=torch.bool).scatter_(2, ic.long().unsqueeze(-1), True)
    for n in range(2):
        for c in range(16):
            d = diff[n, c][~routes[n, c]]
            torch.testing.assert_close(d, d[:1].expand_as(d), rtol=0, atol=1e-6)


def test_hooks_and_a_swapped_activation_keep_the_block_call():
    """Backward hooks on the attention, global hooks and a block whose ReLU was swapped or hooked all
    need the modules called as such: the block then runs relu(attn(out) + identity) itself."""
    m = create_model("resnet20", in_chans=1, num_classes=3, attention="cbam")
    x = torch.randn(4, 1, 12, 12)
    fired = []
    h = m.layer1[0].attn.register_full_backward_hook(lambda mod, gi, go: fired.append(1))
    m(x).sum().backward()
    h.remove()
    assert fired == [1]
    seen = []
    h = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, inp, out: seen.append(mod) if isinstance(mod, cbam.CBAM) else None)
    try:
        m(x)
    finally:
        h.remove()
    assert len(seen) == 9
    blk = m.layer1[0]
    blk.relu = torch.nn.LeakyReLU(0.5)
    inp = torch.randn(2, 16, 6, 6)
    out = blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(inp)))))
    torch.testing.assert_close(blk(inp), blk.relu(blk.attn(out) + inp))
    assert (blk(inp) < 0).any()


def test_script_keeps_the_reference_tail():
    m = create_model("resnet20", in_chans=1, num_classes=3, attention="cbam").eval()
    s = torch.jit.script(m)
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(s(x), m(x))


def test_fewer_samples_than_threads_use_the_cpp_kernels(monkeypatch):
    """Both layouts take the C++ kernels whatever the batch (batch-1 inference included); only
    other layouts (strided views) use the torch kernels."""
    _cpp()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for n in (1, 2, 4):
        assert FW.backend_name(torch.randn(n, 8, 5, 5).contiguous(memory_format=torch.channels_last)) == "cpp"
        assert FW.backend_name(torch.randn(n, 8, 5, 5)) == "cpp"
    assert FW.backend_name(torch.randn(2, 8, 5, 10)[..., ::2]) == "torch"


def test_identity_on_another_device_or_dtype_is_refused():
    m = randomize_(cbam.CBAM(8))
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="identity must match x"):
        fused_cbam_tail(x, torch.randn(2, 8, 4, 4, dtype=torch.float64), **_weights(m))
    with pytest.raises(ValueError, match="identity must match x"):
        fused_cbam_tail(x, torch.randn(2, 8, 4, 5), **_weights(m))


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_module_weights(train):
    """model.to(memory_format=channels_last) also makes the spatial conv's (1, 2, k, k) weight
    channels_last; the kernels take it in that layout: the fused tail's values and every gradient
    (the conv weight's included) equal the reference module's with the same weights."""
    _cpp()
    torch.manual_seed(5)
    ref = randomize_(cbam.CBAM(16, impl="reference")).double()
    fused = cbam.CBAM(16, impl="fused").double()
    fused.load_state_dict(ref.state_dict())
    fused = fused.to(memory_format=torch.channels_last)
    wc = fused.spatial.conv.weight
    assert not wc.is_contiguous() and wc.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 16, 9, 11, dtype=torch.float64).to(memory_format=torch.channels_last)
    ident = torch.randn_like(x)
    outs = []
    for m in (ref, fused):
        m.train(train)
        xx, ii = x.clone().requires_grad_(), ident.clone().requires_grad_()
        y = m.forward_tail(xx, ii)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
        outs.append([y.detach(), xx.grad, ii.grad] + [p.grad for p in m.parameters()])
    assert FW.backend_name(x) == "cpp"
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.skipif(_cpu.load() is None, reason="C++ kernels not built here")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_relu_grad_is_where_out_positive(dtype):
    """The batch-wide backward's relu mask: g where out > 0, else 0, bit for bit as torch.where, for
    signed zeros, infinities, NaN and subnormal outputs (16-bit dtypes compare on their bits)."""
    K = _cpu.load()
    torch.manual_seed(0)
    g, out = torch.randn(2, 64, 9, 9).to(dtype), torch.randn(2, 64, 9, 9).to(dtype)
    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-40, -1e-40, 1e-6, -1e-6])
    out.view(-1)[:9] = special.to(dtype)
    g.view(-1)[:9] = float("inf")
    assert torch.equal(K.relu_grad(g, out), torch.where(out > 0, g, 0))
