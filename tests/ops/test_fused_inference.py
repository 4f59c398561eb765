"""The two forward strategies of the fused op -- three passes over the batch, or every pass per
sample while the sample is in cache -- and the inference mode that skips the argmax routes:
all equal to the reference (cbam.functional)."""
import pytest
import torch
from hypothesis import given, strategies as st

import cbam
from cbam.ops import _cpu
from cbam.ops import _forward as FW
from cbam.ops import fused_cbam_with_gates
from tests.helpers import randomize_, rel_err as _rel

LIM = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _args(m, x, max_first):
    ch, sp, bn = m.channel, m.spatial, m.spatial.bn
    bnargs = (bn.weight, bn.bias, bn.running_mean, bn.running_var) if bn is not None else (None,) * 4
    return (x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, None, *bnargs,
            bn is not None, m.training, 1e-5, max_first)


def _cpp():
    K = _cpu.load()
    if K is None:
        pytest.skip(f"C++ kernels not built here: {_cpu.error()}")
    return K


@pytest.mark.parametrize("preset", ["paper", "official", "timm"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("need_idx", [False, True])
@pytest.mark.parametrize("group", [1, 3])
def test_per_sample_equals_three_passes(preset, train, dtype, need_idx, group, monkeypatch):
    K = _cpp()
    monkeypatch.setattr(FW, "mlp_group", lambda x, w1: group)  # 3: one batched MLP per 3 samples (+ a tail)
    torch.manual_seed(1)
    m = randomize_(cbam.CBAM.from_preset(preset, 40, kernel_size=7 if train else 3)).train(train)
    x = torch.randn(5, 40, 9, 6).to(dtype)
    args = _args(m, x, preset != "paper")
    with torch.no_grad():
        a = FW._forward_samples(K, *args, need_idx, None)
        b = FW.forward(FW.TK, *args, need_idx)  # the three passes with the torch kernels
    names = ["y", "mc", "ms", "p_avg", "p_max", "idx_c", "sd", "idx_s", "bmean", "bvar", "mlp pre-activations"]
    for name, u, v in zip(names, a, b):
        assert u.shape == v.shape and u.dtype == v.dtype, name
        if name.startswith("idx"):
            assert torch.equal(u, v), name  # first argmax, exactly
        elif v.numel():
            assert _rel(u, v) <= LIM[dtype], (name, _rel(u, v))


def _inject_llc(monkeypatch, per_thread: int) -> int:
    """Sets the last-level cache the heuristics see (not the host's: its size varies by CPU)."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("CBAM_LLC_BYTES", str(per_thread * threads))
    monkeypatch.setattr(FW, "_LLC", {})  # the heuristics read it once per thread count
    return threads


def test_mlp_group_only_for_wide_layers(monkeypatch):
    threads = _inject_llc(monkeypatch, 16 << 20)
    wide, narrow = torch.empty(128, 2048), torch.empty(16, 256)
    g = FW.mlp_group(torch.empty(16 * threads, 2048, 7, 7), wide)
    assert 8 <= g <= 16 and 16 % g == 0  # equal groups of a thread's 16 samples
    assert FW.mlp_group(torch.empty(16 * threads, 256, 7, 7), narrow) == 1  # small weights: mat-vecs
    assert FW.mlp_group(torch.empty(2 * threads, 2048, 7, 7), wide) == 1  # too few samples for BLAS


def test_per_sample_chosen_when_it_pays(monkeypatch):
    K = _cpp()
    threads = _inject_llc(monkeypatch, 16 << 20)  # each thread's sample must fit half its share: 8 MiB
    assert FW.per_sample(K, torch.empty(4 * threads, 64, 28, 28))
    assert FW.per_sample(K, torch.empty(4 * threads, 2, 1024, 1024))  # 8 MiB
    assert not FW.per_sample(K, torch.empty(4 * threads, 2, 1024, 1025))
    assert not FW.per_sample(K, torch.empty(threads * 4, 2048, 112, 112))  # a sample larger than the cache
    _inject_llc(monkeypatch, 240 << 20)  # a CPU with that much cache per thread would keep it
    assert FW.per_sample(K, torch.empty(threads * 4, 2048, 112, 112))
    _inject_llc(monkeypatch, 16 << 20)
    assert not FW.per_sample(FW.TK, torch.empty(4 * threads, 64, 28, 28))  # only the C++ kernels have it


def test_few_or_uneven_samples_run_per_sample_when_small(monkeypatch):
    """With fewer samples than threads, or a number that does not split evenly, a sample of up to
    SMALL_SAMPLE elements still runs per sample (idle threads cost less than the batch-wide passes'
    calls); a larger one takes the batch-wide passes, which use every thread."""
    K = _cpp()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    _inject_llc(monkeypatch, 16 << 20)
    small, large = (64, 28, 28), (64, 128, 65)  # 50,176 and 532,480 elements
    assert 64 * 28 * 28 <= FW.SMALL_SAMPLE < 64 * 128 * 65
    for n in (1, 3, 5, 6):  # fewer samples than threads, or uneven and under 4 per thread
        assert FW.per_sample(K, torch.empty(n, *small)), n
        assert not FW.per_sample(K, torch.empty(n, *large)), n
    assert FW.per_sample(K, torch.empty(8, *large)) and FW.per_sample(K, torch.empty(17, *large))  # even, or >= 4 each
    _inject_llc(monkeypatch, 64 << 10)  # an uneven split runs per sample only if the samples stay cached, too
    assert not FW.per_sample(K, torch.empty(5, *small)) and FW.per_sample(K, torch.empty(1, *small))
    # channels_last has no batch-wide C++ passes: a large sample with idle threads goes to the torch kernels
    cl = dict(memory_format=torch.channels_last)
    assert FW.backend_name(torch.empty(1, *large).to(**cl)) == "torch"
    assert FW.backend_name(torch.empty(1, *small).to(**cl)) == FW.backend_name(torch.empty(4, *large).to(**cl)) == "cpp"


@given(n=st.integers(1, 16), c=st.integers(1, 300), h=st.integers(1, 40), w=st.integers(1, 40),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
       channels_last=st.booleans(), preset=st.sampled_from(["paper", "official", "timm"]), train=st.booleans())
def test_inference_matches_reference(n, c, h, w, dtype, channels_last, preset, train):
    """no_grad forward (no argmax routes kept) against the float64 reference; BN statistics too."""
    if train and preset != "paper" and n * h * w == 1:
        train = False
    torch.manual_seed(n + 7 * c + 131 * h + 977 * w)
    ref = randomize_(cbam.CBAM.from_preset(preset, c, impl="reference")).train(train)
    fus = cbam.CBAM.from_preset(preset, c, impl="fused").train(train)
    fus.load_state_dict(ref.state_dict())
    ref.double()  # the oracle: the same weights in float64
    x = torch.randn(n, c, h, w).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        want = ref(x.double())
        got = fus.to(dtype if dtype != torch.float16 else torch.float32)(x)
    assert got.dtype == dtype
    lim = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype]
    assert _rel(got, want) <= lim
    # in bf16 the module's weights are rounded too (8 mantissa bits): the batch mean of the unit-scale
    # conv output is off by up to ~1e-2 and the running mean takes a tenth of that (near-zero means
    # missed atol=1e-4 by 3e-5 and 6e-4 on 6x16 and 3x10 maps)
    bf16 = dtype == torch.bfloat16
    for (name, br), bf in zip(ref.named_buffers(), fus.buffers()):
        torch.testing.assert_close(bf.double(), br.double(), rtol=1e-2 if bf16 else 1e-4, atol=2e-3 if bf16 else 1e-4,
                                   msg=name)


def test_inference_keeps_no_indices_and_refuses_backward():
    m = randomize_(cbam.CBAM(16, impl="fused")).eval()
    x = torch.randn(4, 16, 6, 6)
    args = _args(m, x, False)
    with torch.no_grad():
        out = torch.ops.cbam.fused_cbam_fwd(*args, False, None)
    assert out[5].numel() == 0 and out[7].numel() == 0 and out[10].numel() == 0  # idx_c, idx_s, pre not kept
    with torch.no_grad():
        torch.testing.assert_close(out[0], m(x))
    xr = x.clone().requires_grad_()
    out = torch.ops.cbam.fused_cbam_fwd(xr, *args[1:], False, None)
    with pytest.raises(RuntimeError, match="need_idx=False"):
        out[0].sum().backward()
    y, mc, ms = fused_cbam_with_gates(xr, *args[1:6])  # the public function asks for the routes itself
    y.sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all()


@pytest.mark.parametrize("preset,train", [("paper", True), ("paper", False), ("official", False), ("timm", False),
                                          ("official", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_per_sample_backward_equals_three_passes(preset, train, dtype, monkeypatch):
    """Input, weight and gate gradients of the per-sample backward (C++) against the three-pass one."""
    _cpp()
    torch.manual_seed(2)
    m = randomize_(cbam.CBAM.from_preset(preset, 24, impl="fused")).train(train)
    x = torch.randn(4 * torch.get_num_threads(), 24, 7, 9).to(dtype)
    g = torch.randn_like(x)
    args = _args(m, x, preset != "paper")

    def grads(per_sample):
        monkeypatch.setattr(FW, "per_sample", lambda K, t: per_sample)
        xx = x.clone().requires_grad_()
        params = [a for a in args[1:9] if isinstance(a, torch.Tensor)]
        for p in params:
            p.grad = None
        y, mc, ms = fused_cbam_with_gates(xx, *args[1:9], bn_running_mean=None if train else args[9],
                                          bn_running_var=None if train else args[10], bn_training=train,
                                          use_bn=args[11], order="max_avg" if args[-1] else "avg_max")
        ((y * g).sum() + mc.square().sum() + ms.sin().sum()).backward()  # gradients into the gates too
        return [xx.grad] + [p.grad.clone() for p in params]
    a, b = grads(True), grads(False)
    for i, (u, v) in enumerate(zip(a, b)):
        assert _rel(u, v) <= LIM[dtype] * (10 if i else 1), (i, _rel(u, v))
