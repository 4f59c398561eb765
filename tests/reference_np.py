"""Independent float64 numpy implementations used as test oracles.

Written from the papers' equations, without calling any cbam code, so that a
bug in cbam.functional cannot hide in both places. The CBAM functions take any
number of spatial dims: x of shape (N, C, L), (N, C, H, W) or (N, C, D, H, W).
"""
import itertools

import numpy as np


def sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + e^-z) without overflow for large negative z


def relu(z):
    return np.maximum(z, 0.0)


def conv_single(maps, weight, bias=0.0):
    """maps (N, K, *S), weight (1, K, *k) -> (N, *S): one output map, zero padding k//2, any
    number of spatial dims (1-D, 2-D, 3-D)."""
    n, kin, *size = maps.shape
    k = weight.shape[-1]
    p = k // 2
    padded = np.zeros((n, kin, *[s + 2 * p for s in size]))
    padded[(slice(None), slice(None), *[slice(p, p + s) for s in size])] = maps
    out = np.full((n, *size), float(bias))
    for c in range(kin):
        for offs in itertools.product(range(k), repeat=len(size)):
            window = tuple(slice(o, o + s) for o, s in zip(offs, size))
            out += weight[(0, c, *offs)] * padded[(slice(None), c, *window)]
    return out


def pool(x, kind):
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    if kind == "avg":
        return flat.mean(-1)
    if kind == "max":
        return flat.max(-1)
    if kind == "lp":
        return np.sqrt((flat ** 2).sum(-1))
    if kind == "lse":
        m = flat.max(-1, keepdims=True)
        return (m + np.log(np.exp(flat - m).sum(-1, keepdims=True)))[..., 0]
    raise ValueError(kind)


def channel_gate(x, w1, b1, w2, b2, pools=("avg", "max")):
    z = 0.0
    for p in pools:
        d = pool(x, p)
        h = relu(d @ w1.T + (0 if b1 is None else b1))
        z = z + h @ w2.T + (0 if b2 is None else b2)
    return sigmoid(z).reshape(z.shape + (1,) * (x.ndim - 2))


def spatial_gate(x, wc, bc=None, order="avg_max", bn=None):
    avg, mx = x.mean(1), x.max(1)
    maps = np.stack([avg, mx] if order == "avg_max" else [mx, avg], 1)
    s = conv_single(maps, wc, 0.0 if bc is None else bc[0])
    if bn is not None:  # eval-mode BN: (weight, bias, mean, var, eps)
        g, b, m, v, eps = bn
        s = (s - m) / np.sqrt(v + eps) * g + b
    return sigmoid(s)[:, None]


def cbam(x, w1, b1, w2, b2, wc, bc=None, order="avg_max", bn=None, arrangement="channel_first",
         pools=("avg", "max")):
    if arrangement == "channel_first":
        x1 = x * channel_gate(x, w1, b1, w2, b2, pools)
        return x1 * spatial_gate(x1, wc, bc, order, bn)
    if arrangement == "spatial_first":
        x1 = x * spatial_gate(x, wc, bc, order, bn)
        return x1 * channel_gate(x1, w1, b1, w2, b2, pools)
    return x * channel_gate(x, w1, b1, w2, b2, pools) * spatial_gate(x, wc, bc, order, bn)


def se(x, w1, b1, w2, b2):
    return x * channel_gate(x, w1, b1, w2, b2, ("avg",))


def eca(x, w):
    k = w.shape[-1]
    p = k // 2
    y = x.mean((2, 3))
    yp = np.pad(y, ((0, 0), (p, p)))
    z = np.zeros_like(y)
    for j in range(k):
        z += w[0, 0, j] * yp[:, j:j + y.shape[1]]
    return x * sigmoid(z)[:, :, None, None]


def simam(x, lam=1e-4):
    n = max(x.shape[2] * x.shape[3] - 1, 1)
    mu = x.mean((2, 3), keepdims=True)
    d = (x - mu) ** 2
    v = d.sum((2, 3), keepdims=True) / n
    return x * sigmoid(d / (4 * (v + lam)) + 0.5)
