"""The fused op's cache of full-size CPU outputs: freed outputs are reused by the next call of the
same size (no fresh pages to fault in), the values stay right, and the limit is honoured."""
import gc

import pytest
import torch

import cbam
from cbam import ops
from cbam.ops import _cpu
from tests.helpers import randomize_


@pytest.fixture
def cache():
    if _cpu.load() is None:
        pytest.skip(f"C++ kernels not built here: {_cpu.error()}")
    limit = _cpu.load().cache_limit()
    ops.set_output_cache_limit(1 << 30)
    ops.empty_output_cache()
    yield
    ops.set_output_cache_limit(limit)
    ops.empty_output_cache()


def _pair(c=64):
    torch.manual_seed(0)
    ref = randomize_(cbam.CBAM(c, impl="reference")).eval()
    fus = cbam.CBAM(c, impl="fused").eval()
    fus.load_state_dict(ref.state_dict())
    return ref, fus


def test_freed_output_is_reused_with_right_values(cache):
    ref, fus = _pair()
    x = torch.randn(4, 64, 32, 32)  # 1 MiB (the cache takes >= 256 KiB)
    with torch.no_grad():
        y = fus(x)
        ptr, nbytes = y.data_ptr(), y.numel() * y.element_size()
        del y
        gc.collect()
        assert ops.output_cache_bytes() == nbytes
        y2 = fus(2 * x)
        assert y2.data_ptr() == ptr and ops.output_cache_bytes() == 0
        torch.testing.assert_close(y2, ref(2 * x))


def test_input_gradient_buffers_are_reused(cache):
    ref, fus = _pair()
    x = torch.randn(4, 64, 32, 32, requires_grad=True)
    fus(x).square().sum().backward()
    g1 = x.grad
    ptr = g1.data_ptr()
    x.grad = None
    del g1
    fus(x).square().sum().backward()
    assert x.grad.data_ptr() == ptr  # dx came out of the cache
    xr = x.detach().requires_grad_()
    ref(xr).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_small_outputs_and_zero_limit_bypass_the_cache(cache):
    _, fus = _pair()
    with torch.no_grad():
        del_me = fus(torch.randn(2, 64, 8, 8))  # 32 KiB: torch's allocator
        del del_me
        assert ops.output_cache_bytes() == 0
        ops.set_output_cache_limit(0)
        y = fus(torch.randn(4, 64, 32, 32))
        del y
        assert ops.output_cache_bytes() == 0


def test_cached_outputs_are_ordinary_tensors(cache):
    _, fus = _pair()
    with torch.no_grad():
        y = fus(torch.randn(4, 64, 32, 32))
        n = y.numel()
        y.resize_(2 * n).fill_(3.0)  # the storage grows through the same allocator
        assert y.shape == (2 * n,) and bool((y == 3.0).all())
        del y
        assert ops.output_cache_bytes() == 4 * n + 8 * n  # the first block (freed by the resize), then the grown one
        assert ops.empty_output_cache() == 12 * n and ops.output_cache_bytes() == 0


def test_limit_is_checked():
    with pytest.raises(ValueError, match=">= 0 bytes"):
        ops.set_output_cache_limit(-1)


def test_mlp_weight_gradients_and_temporaries_are_reused(cache):
    """At C = 2048 the MLP backward's buffers (dW1, dW2: 1 MiB each, and its (2N, C) temporaries) come
    from the cache: from torch's allocator they were fresh mappings on every call (~700 page faults)."""
    ref, fus = _pair(2048)
    x = torch.randn(2, 2048, 3, 3, requires_grad=True)
    fus(x).square().sum().backward()
    ptrs = {n: p.grad.data_ptr() for n, p in fus.named_parameters() if p.grad.numel() * 4 >= 1 << 20}
    assert len(ptrs) == 2  # channel.fc1.weight, channel.fc2.weight
    fus.zero_grad(set_to_none=True)
    x.grad = None
    fus(x).square().sum().backward()
    # the same two blocks (which gradient gets which is up to the cache: both are 1 MiB)
    assert {p.grad.data_ptr() for n, p in fus.named_parameters() if n in ptrs} == set(ptrs.values())
    ref(x.detach().requires_grad_()).square().sum().backward()
    for (n, p), (_, q) in zip(fus.named_parameters(), ref.named_parameters()):  # float32 sums over 2048 terms:
        assert ((p.grad - q.grad).norm() / q.grad.norm()).item() < 1e-4, n  # compared in norm


MiB = 1 << 20
A, C, B = (4, 64, 32, 32), (4, 64, 32, 40), (4, 64, 32, 48)  # outputs of 1, 1.25 and 1.5 MiB


def _outputs(fus, shape, keep=1):
    """Runs ``keep`` forwards of ``shape`` with all outputs alive, then frees them (into the cache);
    returns their data pointers."""
    with torch.no_grad():
        ys = [fus(torch.randn(shape)) for _ in range(keep)]
    ptrs = [y.data_ptr() for y in ys]
    del ys
    return ptrs


def test_changing_shapes_evict_the_old_size(cache):
    """A full cache makes room for the size in use now instead of dropping it on every call."""
    _, fus = _pair()
    ops.set_output_cache_limit(2 * MiB)
    _outputs(fus, A, keep=2)
    assert ops.output_cache_bytes() == 2 * MiB
    ptrs = [p for _ in range(3) for p in _outputs(fus, B)]
    assert ops.output_cache_bytes() == 1.5 * MiB  # both 1 MiB blocks evicted for the 1.5 MiB one
    assert ptrs[1] == ptrs[2] == ptrs[0]
    with torch.no_grad():
        y = fus(torch.randn(A))
    assert ops.output_cache_bytes() == 1.5 * MiB  # no 1 MiB block left to reuse
    del y


def test_least_recently_freed_block_is_evicted_first(cache):
    _, fus = _pair()
    ops.set_output_cache_limit(3 * MiB)
    _outputs(fus, A)
    (pc,) = _outputs(fus, C)
    _outputs(fus, B)  # 1 + 1.25 + 1.5 MiB > 3 MiB: the oldest (A) goes
    assert ops.output_cache_bytes() == 2.75 * MiB
    with torch.no_grad():
        y = fus(torch.randn(C))
        assert y.data_ptr() == pc and ops.output_cache_bytes() == 1.5 * MiB
        z = fus(torch.randn(A))
        assert ops.output_cache_bytes() == 1.5 * MiB
    del y, z
    assert ops.output_cache_bytes() == 2.25 * MiB  # C back, then A: B, the least recent, evicted


def test_lower_limit_keeps_the_recent_blocks(cache):
    _, fus = _pair()
    _outputs(fus, A)
    _outputs(fus, C)
    ops.set_output_cache_limit(int(1.5 * MiB))
    assert ops.output_cache_bytes() == 1.25 * MiB  # A evicted, C kept
    _outputs(fus, B)  # 1.5 MiB, whole limit: evicts C
    assert ops.output_cache_bytes() == 1.5 * MiB
    ops.set_output_cache_limit(MiB)
    _outputs(fus, A)
    _outputs(fus, B)  # larger than the limit: freed, and A stays
    assert ops.output_cache_bytes() == MiB
