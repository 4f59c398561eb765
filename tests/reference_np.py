"""Independent float64 numpy implementations used as test oracles.

Written from the papers' equations, without calling any cbam code, so that a
bug in cbam.functional cannot hide in both places.
"""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def relu(z):
    return np.maximum(z, 0.0)


def conv2d_single(maps, weight, bias=0.0):
    """maps (N, K, H, W), weight (1, K, k, k) -> (N, H, W) with zero padding k//2."""
    n, kin, h, w = maps.shape
    k = weight.shape[-1]
    p = k // 2
    padded = np.zeros((n, kin, h + 2 * p, w + 2 * p))
    padded[:, :, p:p + h, p:p + w] = maps
    out = np.full((n, h, w), float(bias))
    for c in range(kin):
        for i in range(k):
            for j in range(k):
                out += weight[0, c, i, j] * padded[:, c, i:i + h, j:j + w]
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
    return sigmoid(z)[:, :, None, None]


def spatial_gate(x, wc, bc=None, order="avg_max", bn=None):
    avg, mx = x.mean(1), x.max(1)
    maps = np.stack([avg, mx] if order == "avg_max" else [mx, avg], 1)
    s = conv2d_single(maps, wc, 0.0 if bc is None else bc[0])
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
