"""Module weights as float64 numpy arrays for the oracles of tests/reference_np.py."""
from tests import reference_np as R


def to_np(t):
    return None if t is None else t.detach().double().numpy()


def bn_np(m):
    """A CBAM's eval-mode spatial BN as the oracle takes it, or None."""
    bn = m.spatial.bn
    if bn is None:
        return None
    return (to_np(bn.weight)[0], to_np(bn.bias)[0], to_np(bn.running_mean)[0], to_np(bn.running_var)[0], bn.eps)


def cbam_oracle(m, x):
    """The numpy CBAM with the weights of module ``m`` (any CBAM, 1-D/2-D/3-D), on array ``x``."""
    ch, sp = m.channel, m.spatial
    return R.cbam(x, to_np(ch.fc1.weight), to_np(ch.fc1.bias), to_np(ch.fc2.weight), to_np(ch.fc2.bias),
                  to_np(sp.conv.weight), to_np(sp.conv.bias), sp.pool_order, bn_np(m), m.arrangement,
                  tuple(ch.pool_types))
