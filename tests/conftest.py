import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def to_nhwc(x, w):
    """NCHW input / OIHW weight -> NHWC input / HWIO weight."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(
        w.transpose(2, 3, 1, 0))


def from_nhwc(y):
    return y.transpose(0, 3, 1, 2)
