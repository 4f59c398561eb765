"""The C++ eager entry points (csrc/eager.cpp). ``infer_forward``: taken for per-sample inference
calls, equal to the reference. ``train_forward``'s autograd node: taken for per-sample training
calls, equal to the reference in values and every gradient, and as well behaved as a built-in op:
gradients in each weight's dtype, no double backward (with the fix named), backward inside
autocast, saved-tensor hooks, retain_graph, a gradient only for what requires one."""
import pytest
import torch

import cbam
from cbam.ops import _cpu
from tests.helpers import randomize_, rel_err

CL = torch.channels_last
K = _cpu.load()
pytestmark = pytest.mark.skipif(K is None, reason="C++ kernels not built here")


def _pair(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    m = randomize_(cbam.CBAM(16, 4, **kw)).to(dtype)
    ref = cbam.CBAM(16, 4, impl="reference", **kw).double()
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    return m, ref


def _is_node(y):
    return y.grad_fn is not None and "TrainNode" in y.grad_fn.name()


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("kw", [{}, dict(mlp_bias=True, spatial_bias=True, pool_order="max_avg")], ids=["paper", "biases"])
def test_node_taken_and_equal_to_reference(layout, tail, kw):
    m, ref = _pair(**kw)
    x = torch.randn(4, 16, 7, 9, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    ident = torch.randn_like(x).requires_grad_()
    y = m.forward_tail(x, ident) if tail else m(x)
    assert _is_node(y) and y.is_contiguous(memory_format=layout)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *([ident] if tail else []), *m.parameters()], g)
    xr, ir = x.detach().clone().requires_grad_(), ident.detach().clone().requires_grad_()
    yr = torch.relu(ref(xr) + ir) if tail else ref(xr)
    want = torch.autograd.grad(yr, [xr, *([ir] if tail else []), *ref.parameters()], g)
    assert rel_err(y, yr) < 1e-10
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-10


def test_gradcheck_float64():
    m, _ = _pair(mlp_bias=True, spatial_bias=True)
    x = torch.randn(2, 16, 5, 4, dtype=torch.float64, requires_grad=True)
    ident = torch.randn_like(x, requires_grad=True)
    ch, conv = m.channel, m.spatial.conv
    params = [ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, conv.weight, conv.bias]

    def f(x, ident, w1, b1, w2, b2, wc, bc):
        return K.train_forward(x, w1, b1, w2, b2, wc, bc, ident, False)

    assert torch.autograd.gradcheck(f, (x, ident, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_weights_get_gradients_in_their_dtype(dtype):
    m, ref = _pair(dtype, mlp_bias=True, spatial_bias=True)
    x = torch.randn(4, 16, 8, 8).to(dtype).requires_grad_()
    y = m(x)
    assert _is_node(y)
    g = torch.randn_like(y)
    y.backward(g)
    xr = x.detach().double().requires_grad_()
    ref(xr).backward(g.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(x.grad, xr.grad) < tol
    for p, q in zip(m.parameters(), ref.parameters()):
        assert p.grad.dtype == dtype and p.grad.shape == p.shape
        assert rel_err(p.grad, q.grad) < tol


def test_no_double_backward_names_the_fix():
    m, _ = _pair()
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert _is_node(y)
    with pytest.raises(RuntimeError, match='impl="reference"'):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)


def test_backward_inside_autocast_is_float32_math():
    m, _ = _pair(torch.float32)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    y = m(x)
    assert _is_node(y)
    g = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, x, g, retain_graph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (got,) = torch.autograd.grad(y, x, g)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_saved_tensor_hooks_and_retain_graph():
    m, _ = _pair()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    assert _is_node(y) and len(packed) >= 10  # x, the gates, the pooled descriptors, the routes, the weights
    (g1,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    (g2,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_gradient_only_for_what_requires_it():
    m, ref = _pair()
    m.requires_grad_(False)
    m.channel.fc2.weight.requires_grad_(True)
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)  # no input gradient
    y = m(x)
    assert _is_node(y)
    y.square().sum().backward()
    ref(x).square().sum().backward()
    assert m.channel.fc1.weight.grad is None and m.spatial.conv.weight.grad is None
    assert rel_err(m.channel.fc2.weight.grad, ref.channel.fc2.weight.grad) < 1e-10


@pytest.mark.parametrize("train", [False, True])
def test_identity_in_the_other_layout(train):
    m, ref = _pair()
    x = torch.randn(4, 16, 6, 5, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_(train)
    ident = torch.randn(4, 16, 6, 5, dtype=torch.float64).requires_grad_(train)  # NCHW
    with torch.set_grad_enabled(train):
        y = m.forward_tail(x, ident)
    assert _is_node(y) == train and y.is_contiguous(memory_format=CL)
    xr, ir = x.detach().clone().requires_grad_(train), ident.detach().clone().requires_grad_(train)
    with torch.set_grad_enabled(train):
        yr = torch.relu(ref(xr) + ir)
    assert rel_err(y, yr) < 1e-10
    if train:
        g = torch.randn_like(yr)
        for a, b in zip(torch.autograd.grad(y, [x, ident], g), torch.autograd.grad(yr, [xr, ir], g)):
            assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("kw", [{}, dict(mlp_bias=True, spatial_bias=True, pool_order="max_avg")], ids=["paper", "biases"])
def test_inference_entry_taken_and_equal_to_reference(monkeypatch, layout, dtype, kw):
    calls = []
    real = K.infer_forward
    monkeypatch.setattr(K, "infer_forward", lambda *a: calls.append(a[7] is not None) or real(*a))
    m, ref = _pair(dtype, **kw)
    x = torch.randn(4, 16, 7, 9).to(dtype).contiguous(memory_format=layout)
    ident = torch.randn_like(x)
    with torch.no_grad():
        y, yt = m(x), m.forward_tail(x, ident)
        want, want_t = ref(x.double()), torch.relu(ref(x.double()) + ident.double())
    assert calls == [False, True]
    assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
    tol = 1e-10 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 2e-3)
    assert rel_err(y, want) < tol and rel_err(yt, want_t) < tol


@pytest.mark.parametrize("shape", [(2, 16, 5, 5), (8, 16, 224, 224), (1, 16, 3, 3), (3, 16, 7, 9)])
def test_inference_buffers_reused_across_shapes(shape):
    """The inference entry keeps its small per-sample buffers between calls (a fresh one past 4 MiB: the
    224 x 224 batch): calls of growing, larger-than-kept and shrinking sizes, float32 and float64 in
    turn, each equal to the reference."""
    m, ref = _pair(torch.float32)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(shape).to(dtype)
        with torch.no_grad():
            y = m.to(dtype)(x)
            want = ref(x.double())
        assert rel_err(y, want) < (1e-10 if dtype == torch.float64 else 1e-5)


def _tail_setup():
    m, ref = _pair()
    x = torch.randn(4, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    ident = torch.randn_like(x, requires_grad=True)
    return m, ref, x, ident


def test_identity_gradient_taken_over_from_an_unshared_gradient():
    m, ref, x, ident = _tail_setup()
    w = torch.randn(4, 16, 6, 6, dtype=torch.float64)
    y = m.forward_tail(x, ident)
    before = K.gradients_taken_over()
    (y * w).sum().backward()  # the product's backward hands over a fresh gradient, w * 1
    assert K.gradients_taken_over() == before + 1
    xr, ir = x.detach().clone().requires_grad_(), ident.detach().clone().requires_grad_()
    (torch.relu(ref(xr) + ir) * w).sum().backward()
    assert rel_err(ident.grad, ir.grad) < 1e-10 and rel_err(x.grad, xr.grad) < 1e-10


def test_shared_or_user_held_gradients_are_left_alone():
    m, ref, x, ident = _tail_setup()
    x2, ident2 = x.detach().clone().requires_grad_(), ident.detach().clone().requires_grad_()
    g = torch.randn(4, 16, 6, 6, dtype=torch.float64)
    g_before = g.clone()
    y1, y2 = m.forward_tail(x, ident), m.forward_tail(x2, ident2)
    before = K.gradients_taken_over()
    (y1 + y2).backward(g)  # the add passes one gradient tensor to both tails; the caller holds g
    assert torch.equal(g, g_before) and K.gradients_taken_over() == before
    xr, ir = x.detach().clone().requires_grad_(), ident.detach().clone().requires_grad_()
    torch.relu(ref(xr) + ir).backward(g)
    for a in (ident.grad, ident2.grad):
        assert rel_err(a, ir.grad) < 1e-10
    for a in (x.grad, x2.grad):
        assert rel_err(a, xr.grad) < 1e-10


def test_retained_gradient_of_the_output_keeps_its_values():
    m, _, x, ident = _tail_setup()
    y = m.forward_tail(x, ident)
    y.retain_grad()
    z = y * 3
    z.sum().backward()  # (retain_grad keeps a copy: taking the gradient over is allowed, altering y.grad not)
    torch.testing.assert_close(y.grad, torch.full_like(y, 3.0), rtol=0, atol=0)
    torch.testing.assert_close(ident.grad, torch.where(y > 0, 3.0, 0.0).double(), rtol=0, atol=0)


def _ref_grads(ref, x0, ident, w):
    xr, ir = x0.detach().clone().requires_grad_(), ident.detach().clone().requires_grad_()
    (torch.relu(ref(xr * 1) + ir) * w).sum().backward()
    return xr.grad, ir.grad


def test_input_gradient_written_over_x_when_only_the_node_holds_it():
    m, ref, x0, ident = _tail_setup()
    w = torch.randn(4, 16, 6, 6, dtype=torch.float64)
    y = m.forward_tail(x0 * 1, ident)  # x: a temporary that only the node keeps, as a block's BN output
    before = K.gradients_taken_over()
    (y * w).sum().backward()
    assert K.gradients_taken_over() == before + 2  # the incoming gradient and x
    gx, gi = _ref_grads(ref, x0, ident, w)
    assert rel_err(x0.grad, gx) < 1e-10 and rel_err(ident.grad, gi) < 1e-10


def test_x_kept_where_anything_else_may_read_it():
    m, ref, x0, ident = _tail_setup()
    w = torch.randn(4, 16, 6, 6, dtype=torch.float64)
    gx, gi = _ref_grads(ref, x0, ident, w)
    # held by the caller
    x = x0 * 1
    x_before = x.detach().clone()
    before = K.gradients_taken_over()
    (m.forward_tail(x, ident) * w).sum().backward()
    assert K.gradients_taken_over() == before + 1 and torch.equal(x.detach(), x_before)
    # saved by another op of the graph that runs after the node in the backward (made before it in the
    # forward; an op that has run already has released what it saved)
    x0.grad = ident.grad = None
    x = x0 * 1
    sq = x * x
    y = m.forward_tail(x, ident) * w + sq
    del x, sq
    before = K.gradients_taken_over()
    y.sum().backward()
    assert K.gradients_taken_over() == before + 1
    assert rel_err(x0.grad, gx + 2 * x0.detach()) < 1e-10 and rel_err(ident.grad, gi) < 1e-10
    # a graph kept for another backward
    x0.grad = None
    y = m.forward_tail(x0 * 1, ident)
    before = K.gradients_taken_over()
    (g1,) = torch.autograd.grad((y * w).sum(), x0, retain_graph=True)
    (g2,) = torch.autograd.grad((y * w).sum(), x0)
    assert rel_err(g1, gx) < 1e-10 and rel_err(g2, gx) < 1e-10
    assert K.gradients_taken_over() - before <= 3  # x only in the last backward (and g at most twice)


@pytest.mark.parametrize("preset", ["official", "timm"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("tail", [False, True])
def test_eval_batchnorm_presets_take_the_inference_entry(monkeypatch, preset, layout, tail):
    calls = []
    real = K.infer_forward
    monkeypatch.setattr(K, "infer_forward", lambda *a: calls.append(a[11] is not None) or real(*a))
    torch.manual_seed(0)
    m = randomize_(cbam.CBAM.from_preset(preset, 16).double()).eval()
    ref = cbam.CBAM.from_preset(preset, 16, impl="reference").double().eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 16, 7, 9, dtype=torch.float64).contiguous(memory_format=layout)
    ident = torch.randn_like(x)
    with torch.no_grad():
        y = m.forward_tail(x, ident) if tail else m(x)
        want = torch.relu(ref(x) + ident) if tail else ref(x)
    assert calls == [True]  # with the BN's statistics
    assert rel_err(y, want) < 1e-10


def test_batchnorm_in_training_or_with_a_gradient_takes_the_general_path(monkeypatch):
    monkeypatch.setattr(K, "infer_forward", None)  # any call of the entry would fail
    torch.manual_seed(0)
    m = randomize_(cbam.CBAM.from_preset("official", 16).double())
    ref = cbam.CBAM.from_preset("official", 16, impl="reference").double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    for train in (True, False):
        m.train(train), ref.train(train)
        y, yr = m(x), ref(x)
        assert "TrainNode" not in y.grad_fn.name()
        assert rel_err(y, yr) < 1e-10
        for a, b in zip(torch.autograd.grad(y.sum(), [x, *m.parameters()]),
                        torch.autograd.grad(yr.sum(), [x, *ref.parameters()])):
            assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("source", ["numpy", "memmap"])
def test_memory_owned_elsewhere_is_never_written(tmp_path, source):
    np = pytest.importorskip("numpy")
    m, _ = _pair(torch.float32)
    arr = np.random.default_rng(0).standard_normal((4, 16, 6, 6)).astype(np.float32)
    if source == "memmap":  # features on disk: a write would change the file
        arr.tofile(tmp_path / "x.bin")
        arr = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r+", shape=(4, 16, 6, 6))
    keep = np.array(arr)
    x = torch.from_numpy(arr)
    x.mul_(torch.ones((), requires_grad=True))  # a non-leaf that needs a gradient, over numpy's memory
    before = K.gradients_taken_over()
    y = m(x)
    del x  # only the node refers to the tensor now; numpy still owns its memory
    (y * torch.randn_like(y)).sum().backward()
    assert K.gradients_taken_over() == before  # no tail: only x could have been, and must not be
    assert np.array_equal(np.asarray(arr), keep) and np.array_equal(np.fromfile(tmp_path / "x.bin", np.float32).reshape(
        keep.shape) if source == "memmap" else arr, keep)


def test_autocast_inference_with_grouped_mlp(monkeypatch):
    from cbam.ops import _forward as FW
    monkeypatch.setattr(FW, "mlp_group", lambda x, w1: 4)  # the batched MLP of wide layers (C = 2048 at scale)
    torch.manual_seed(0)
    m = randomize_(cbam.CBAM(512, 1)).eval()  # 512 x 512 MLP weights: large enough for grouping
    x = torch.randn(8, 512, 4, 4)
    with torch.no_grad():
        want = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)  # the grouped MLP must stay float32 under autocast
    assert y.dtype == torch.float32 and rel_err(y, want) < 1e-6


def test_low_precision_weights_changed_before_backward_fail_like_any_op():
    m, _ = _pair(torch.bfloat16)
    x = torch.randn(2, 16, 6, 6).bfloat16().requires_grad_()
    y = m(x)
    assert _is_node(y)
    with torch.no_grad():
        m.channel.fc1.weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_checkpointed_block_matches():
    from torch.utils.checkpoint import checkpoint
    m, ref, x0, ident = _tail_setup()
    w = torch.randn(4, 16, 6, 6, dtype=torch.float64)
    for reentrant in (False, True):
        x0.grad = ident.grad = None
        y = checkpoint(lambda a, b: m.forward_tail(a * 1, b), x0, ident, use_reentrant=reentrant)
        (y * w).sum().backward()
        gx, gi = _ref_grads(ref, x0, ident, w)
        assert rel_err(x0.grad, gx) < 1e-10 and rel_err(ident.grad, gi) < 1e-10
