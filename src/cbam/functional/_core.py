"""CBAM's math (channel gate, spatial gate, their composition) for any number of spatial dims;
see :mod:`cbam.functional`."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: Names accepted wherever a non-linearity is chosen (``act``/``gate``).
ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "silu", "swish", "gelu", "gelu_tanh", "mish", "elu", "selu", "tanh",
    "sigmoid", "hard_sigmoid", "hard_swish", "identity",
)
#: Descriptor types for :func:`channel_descriptors` (paper section 3 and the authors' code).
POOL_TYPES = ("avg", "max", "lp", "lse")


def activation(x: Tensor, name: str) -> Tensor:
    """Apply the non-linearity called ``name`` (one of :data:`ACTIVATIONS`); outside
    TorchScript ``name`` may also be a callable, which is applied to ``x``."""
    if not torch.jit.is_scripting():
        if not isinstance(name, str):
            return name(x)
    if name == "relu":
        return F.relu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "identity":
        return x
    if name == "relu6":
        return F.relu6(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.01)
    if name == "silu" or name == "swish":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "mish":
        return F.mish(x)
    if name == "elu":
        return F.elu(x)
    if name == "selu":
        return F.selu(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "hard_sigmoid":
        return F.hardsigmoid(x)
    if name == "hard_swish":
        return F.hardswish(x)
    raise ValueError("unknown activation '" + name + "'; valid names: relu, relu6, leaky_relu, silu, swish, gelu, "
                     "gelu_tanh, mish, elu, selu, tanh, sigmoid, hard_sigmoid, hard_swish, identity")


def _spatial_dims(x: Tensor) -> List[int]:
    return list(range(2, x.dim()))


def _per_channel(g: Tensor, x: Tensor) -> Tensor:
    """``(N, C) -> (N, C, 1, ..., 1)``, broadcastable to ``x``."""
    return g.reshape([g.shape[0], g.shape[1]] + [1] * (x.dim() - 2))


def _conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], padding: int) -> Tensor:
    """The convolution of the weight's rank: 1-D, 2-D or 3-D."""
    if weight.dim() == 3:
        return F.conv1d(x, weight, bias, 1, padding)
    if weight.dim() == 5:
        return F.conv3d(x, weight, bias, 1, padding)
    return F.conv2d(x, weight, bias, 1, padding)


def channel_descriptors(x: Tensor, pool_types: List[str]) -> Tensor:
    """Global descriptors over the spatial dims: ``(N, C, *S) -> (P, N, C)``, one per pool type.

    ``avg`` mean, ``max`` maximum, ``lp`` the L2 norm (the authors' ``lp_pool2d``
    with p=2 over the whole map), ``lse`` log-sum-exp (numerically stable).
    """
    dims = _spatial_dims(x)
    out: List[Tensor] = []
    for p in pool_types:
        if p == "avg":
            out.append(x.mean(dims))
        elif p == "max":
            out.append(x.flatten(2).max(2)[0])
        elif p == "lp":
            out.append(x.square().sum(dims).sqrt())
        elif p == "lse":
            out.append(torch.logsumexp(x.flatten(2), dim=2))
        else:
            raise ValueError("unknown pool type '" + p + "'; valid: avg, max, lp, lse")
    return torch.stack(out, 0)


def channel_gate(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    pool_types: Optional[List[str]] = None,
    act: str = "relu",
    gate: str = "sigmoid",
) -> Tensor:
    """Channel attention weights M_c, ``(N, C, *S) -> (N, C, 1, ...)``.

    ``M_c = gate(sum_p MLP(pool_p(x)))`` with one MLP ``C -> C/r -> C`` shared by
    all descriptors (paper eq. 2). ``fc1_weight`` is ``(C/r, C)``, ``fc2_weight``
    is ``(C, C/r)``, as for :func:`torch.nn.functional.linear`. ``pool_types``
    defaults to ``["avg", "max"]``.
    """
    d = channel_descriptors(x, pool_types if pool_types is not None else ["avg", "max"])
    logits = F.linear(activation(F.linear(d, fc1_weight, fc1_bias), act), fc2_weight, fc2_bias)
    return _per_channel(activation(logits.sum(0), gate), x)


def channel_attention(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    pool_types: Optional[List[str]] = None,
    act: str = "relu",
    gate: str = "sigmoid",
) -> Tensor:
    """``x * M_c(x)``: ``(N, C, *S) -> (N, C, *S)``."""
    return x * channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool_types, act, gate)


def spatial_descriptors(x: Tensor, order: str = "avg_max") -> Tensor:
    """Channel-wise mean and max maps, ``(N, C, *S) -> (N, 2, *S)``.

    ``order="avg_max"`` is the paper's ``[AvgPool; MaxPool]``; ``"max_avg"`` is
    the authors' code (``ChannelPool`` concatenates max first).
    """
    avg = x.mean(1, keepdim=True)
    mx = x.max(1, keepdim=True)[0]
    if order == "avg_max":
        return torch.cat([avg, mx], 1)
    if order == "max_avg":
        return torch.cat([mx, avg], 1)
    raise ValueError("unknown pool order '" + order + "'; valid: avg_max, max_avg")


def spatial_logits(
    x: Tensor,
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    order: str = "avg_max",
    pool_weight: Optional[Tensor] = None,
) -> Tensor:
    """The spatial conv's output before normalisation and gate, ``(N, C, *S) -> (N, 1, *S)``:
    ``conv_k([avg_c(x); max_c(x)])`` with padding ``k // 2``. With ``pool_weight``
    (``(1, C, 1, ...)``) the channel pooling is a learned 1x1 conv (the paper's
    ablation) and ``conv_weight`` has one input channel."""
    d = spatial_descriptors(x, order) if pool_weight is None else _conv(x, pool_weight, None, 0)
    return _conv(d, conv_weight, conv_bias, conv_weight.shape[-1] // 2)


def spatial_gate(
    x: Tensor,
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None,
    bn_training: bool = False,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    use_bn: bool = False,
    order: str = "avg_max",
    gate: str = "sigmoid",
    pool_weight: Optional[Tensor] = None,
) -> Tensor:
    """Spatial attention weights M_s, ``(N, C, *S) -> (N, 1, *S)``.

    ``M_s = gate(BN?(conv_k([avg_c(x); max_c(x)])))`` (paper eq. 3; the BN is
    the authors' code), see :func:`spatial_logits`. ``conv_weight`` is
    ``(1, 2, k, k)`` for 2-D inputs (``(1, 2, k)`` 1-D, ``(1, 2, k, k, k)`` 3-D).
    """
    s = spatial_logits(x, conv_weight, conv_bias, order, pool_weight)
    if use_bn:
        s = F.batch_norm(s, bn_running_mean, bn_running_var, bn_weight, bn_bias, bn_training, bn_momentum, bn_eps)
    return activation(s, gate)


def spatial_attention(
    x: Tensor,
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    order: str = "avg_max",
    gate: str = "sigmoid",
) -> Tensor:
    """``x * M_s(x)`` without normalisation (the paper's form): ``(N, C, *S) -> (N, C, *S)``."""
    return x * spatial_gate(x, conv_weight, conv_bias, order=order, gate=gate)


def cbam_with_gates(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None,
    bn_training: bool = False,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    use_bn: bool = False,
    pool_types: Optional[List[str]] = None,
    order: str = "avg_max",
    arrangement: str = "channel_first",
    act: str = "relu",
    gate: str = "sigmoid",
    pool_weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """CBAM returning ``(y, M_c, M_s)``; see :func:`cbam` for the arguments.

    ``channel_first``: ``x' = M_c(x) * x``, ``y = M_s(x') * x'`` (the paper's
    choice); ``spatial_first`` swaps the two; ``parallel`` computes both gates
    from ``x`` and applies their product, ``y = M_c(x) * M_s(x) * x``.
    """
    if arrangement == "channel_first":
        mc = channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool_types, act, gate)
        x1 = x * mc
        ms = spatial_gate(x1, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                          bn_training, bn_momentum, bn_eps, use_bn, order, gate, pool_weight)
        return x1 * ms, mc, ms
    if arrangement == "spatial_first":
        ms = spatial_gate(x, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                          bn_training, bn_momentum, bn_eps, use_bn, order, gate, pool_weight)
        x1 = x * ms
        mc = channel_gate(x1, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool_types, act, gate)
        return x1 * mc, mc, ms
    if arrangement == "parallel":
        mc = channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool_types, act, gate)
        ms = spatial_gate(x, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                          bn_training, bn_momentum, bn_eps, use_bn, order, gate, pool_weight)
        return x * mc * ms, mc, ms
    raise ValueError("unknown arrangement '" + arrangement + "'; valid: channel_first, spatial_first, parallel")


def cbam(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None,
    bn_training: bool = False,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    use_bn: bool = False,
    pool_types: Optional[List[str]] = None,
    order: str = "avg_max",
    arrangement: str = "channel_first",
    act: str = "relu",
    gate: str = "sigmoid",
    pool_weight: Optional[Tensor] = None,
) -> Tensor:
    """CBAM (paper eq. 1), ``(N, C, H, W) -> (N, C, H, W)``.

    Channel gate weights as in :func:`channel_gate`, spatial conv/BN as in
    :func:`spatial_gate` (``use_bn`` switches the authors' BatchNorm on),
    ``arrangement`` one of ``channel_first`` (paper), ``spatial_first``,
    ``parallel`` (the paper's ablation). ``pool_weight`` replaces the spatial
    avg/max pooling by a learned 1x1 conv (ablation, see :func:`spatial_gate`).
    """
    return cbam_with_gates(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                           bn_weight, bn_bias, bn_running_mean, bn_running_var, bn_training, bn_momentum,
                           bn_eps, use_bn, pool_types, order, arrangement, act, gate, pool_weight)[0]


def cbam_tail(x: Tensor, identity: Tensor, *args, **kwargs) -> Tensor:
    """``relu(cbam(x) + identity)``: CBAM closing a residual block, whose branch output is added to
    the shortcut ``identity`` (``x``'s shape) before the block's ReLU. ``*args, **kwargs`` as
    :func:`cbam`. ``(N, C, H, W), (N, C, H, W) -> (N, C, H, W)``."""
    return torch.relu(cbam(x, *args, **kwargs) + identity)


#: 1-D and 3-D twins of :func:`cbam`, which takes any number of spatial dimensions: ``x`` of
#: shape ``(N, C, L)`` / ``(N, C, D, H, W)`` with a ``(1, 2, k)`` / ``(1, 2, k, k, k)`` conv weight.
cbam1d = cbam
cbam3d = cbam
