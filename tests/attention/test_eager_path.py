"""The module's short eager path (``CBAM._eager_fused`` -> ``cbam.ops.fused.run_eager``): taken in
plain eager calls, equal to the reference there, and left for the general path wherever that
path has something to do (recorded maps, BatchNorm, hooks, autocast, dispatch modes, parametrized
weights, bad input)."""
import sys
import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cbam
from cbam.attention import _base
from cbam.ops import _cpu, fused
from cbam.ops import _forward as FW
from tests.helpers import randomize_, rel_err

CL = torch.channels_last


@pytest.fixture
def calls(monkeypatch):
    """Counts run_eager's calls and how many of them ran the op (not None)."""
    n = {"called": 0, "ran": 0}
    real = fused.run_eager

    def counting(*args):
        n["called"] += 1
        y = real(*args)
        n["ran"] += y is not None
        return y

    monkeypatch.setattr(fused, "run_eager", counting)
    if _cpu.load() is None:
        pytest.skip(f"C++ kernels not built here: {_cpu.error()}")
    return n


def _pair(**kw):
    torch.manual_seed(0)
    m = randomize_(cbam.CBAM(16, 4, **kw).double())
    ref = cbam.CBAM(16, 4, impl="reference", **kw).double()
    ref.load_state_dict(m.state_dict())
    return m, ref


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("kw", [{}, dict(mlp_bias=True, spatial_bias=True, pool_order="max_avg")], ids=["paper", "biases"])
def test_short_path_taken_and_equal_to_reference(calls, layout, tail, train, kw):
    m, ref = _pair(**kw)
    x = torch.randn(3, 16, 9, 7, dtype=torch.float64).contiguous(memory_format=layout)
    ident = torch.randn_like(x)
    g = torch.randn_like(x)
    outs = []
    for mod in (m, ref):
        xx, ii = x.clone().requires_grad_(train), ident.clone().requires_grad_(train)
        with torch.set_grad_enabled(train):
            y = mod.forward_tail(xx, ii) if tail else mod(xx)
        grads = torch.autograd.grad(y, [xx, ii if tail else xx, *mod.parameters()], g) if train else ()
        outs.append((y, grads))
    assert calls["ran"] == 1
    (y, gr), (y_ref, gr_ref) = outs
    assert y.is_contiguous(memory_format=layout)
    assert rel_err(y, y_ref) < 1e-10
    for a, b in zip(gr, gr_ref):
        assert rel_err(a, b) < 1e-10


def test_recorded_maps_take_the_general_path(calls):
    m, ref = _pair()
    m.record_maps = ref.record_maps = True
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))
    assert calls["ran"] == 0 and m.last_spatial_map is not None
    torch.testing.assert_close(m.last_spatial_map, ref.last_spatial_map)


def test_batchnorm_preset_takes_the_general_path(calls):
    torch.manual_seed(0)
    m = randomize_(cbam.CBAM.from_preset("official", 16).double()).train()
    before = m.spatial.bn.running_mean.clone()
    m(torch.randn(4, 16, 6, 6, dtype=torch.float64))
    assert calls["ran"] == 0
    assert not torch.equal(m.spatial.bn.running_mean, before)  # the general path updated the statistics


def test_hooks_on_a_tail_call_run(calls):
    m, _ = _pair()
    seen = []
    m.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    m.forward_tail(x, torch.randn_like(x))
    assert seen == [x.shape]  # the tail ran as relu(self(x) + identity), through the module call


@pytest.mark.parametrize("train", [False, True])
def test_autocast_takes_the_short_path_per_sample(calls, train):
    m, _ = _pair()
    m = m.float()
    x = torch.randn(4, 16, 6, 6).bfloat16().requires_grad_(train)
    ident = torch.randn_like(x).requires_grad_(train)
    outs = []
    for record in (False, True):  # recorded maps: the general path, with the same kernels
        m.record_maps = record
        xx, ii = x.detach().clone().requires_grad_(train), ident.detach().clone().requires_grad_(train)
        with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
            y = m.forward_tail(xx, ii)
            grads = torch.autograd.grad(y, [xx, ii, *m.parameters()], torch.ones_like(y)) if train else ()
        outs.append((y, grads))
    assert calls["ran"] == 1
    (y, gr), (y_ref, gr_ref) = outs
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b in zip(gr, gr_ref):
        assert a.dtype == b.dtype and rel_err(a, b) < 1e-6


def test_autocast_three_passes_and_dispatch_modes_take_the_general_path(calls, monkeypatch):
    m, _ = _pair()
    m = m.float()
    x = torch.randn(2, 16, 6, 6)
    monkeypatch.setattr(FW, "_LLC", {})
    monkeypatch.setenv("CBAM_LLC_BYTES", "1024")  # no sample fits: the batch-wide passes, whose MLP autocast routes
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16 and calls["ran"] == 0
    monkeypatch.undo()
    with FlopCounterMode(display=False) as fc:  # a dispatch mode must see the registered op
        m(x)
    assert calls["ran"] == 0 and fc.get_total_flops() > 0


def test_parametrized_weight_takes_the_general_path(calls):
    m, ref = _pair()
    torch.nn.utils.parametrizations.weight_norm(m.channel.fc1)
    torch.nn.utils.parametrizations.weight_norm(ref.channel.fc1)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), ref(x)) < 1e-10
    assert calls["ran"] == 0


def test_bad_input_still_gets_the_clear_error(calls):
    m, _ = _pair()
    with pytest.raises(ValueError, match=r"CBAM\(channels=16\) got input with 8 channels"):
        m(torch.randn(1, 8, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty input"):
        m(torch.randn(0, 16, 4, 4, dtype=torch.float64))


def test_onnx_flags_are_read(monkeypatch):
    assert not _base.exporting()
    import torch.onnx  # noqa: F401  (the flags exist once it is imported)
    from torch.onnx._internal.exporter import _flags
    monkeypatch.setattr(_flags, "_is_onnx_exporting", True)
    assert _base.exporting()
    monkeypatch.setattr(_flags, "_is_onnx_exporting", False)
    assert not _base.exporting()
    monkeypatch.setattr(_base, "_ONNX_FLAGS", [])
    monkeypatch.delitem(sys.modules, "torch.onnx")
    assert not _base._in_onnx_export()  # no exporter loaded: none can be running


def test_tracing_records_no_warnings():
    """The short path steps aside before any test a tracer would turn into a constant (TracerWarning)."""
    m = cbam.CBAM(16, 4).eval()
    x = torch.randn(2, 16, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(m, (x,))
    torch.testing.assert_close(traced(x), m(x))
