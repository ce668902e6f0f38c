"""fastconv.dask.conv3d: volumes chunked in depth, height and width give the in-memory
conv3d's result (threaded scheduler; the 2-D module covers the distributed one)."""

import numpy as np
import pytest

import fastconv

da = pytest.importorskip("dask.array")
fcd = pytest.importorskip("fastconv.dask")

# (x shape NCDHW, chunks, w shape, kwargs)
CASES = [
    ((2, 2, 9, 8, 10), (1, 2, 4, 3, 5), (3, 2, 3, 3, 3), dict(padding=1)),
    ((1, 4, 10, 9, 8), (1, 3, 3, 4, 3), (4, 2, 3, 2, 3),
     dict(stride=(2, 1, 3), padding=((2, 0), (1, 1), (0, 3)), dilation=(1, 2, 1), groups=2)),
    ((1, 2, 7, 7, 7), (1, 2, 2, 3, 7), (2, 2, 2, 3, 2), dict(padding="same", dilation=2)),
]


@pytest.mark.parametrize("algo", ("naive", "im2col", "fft", "auto"))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_chunked_volume_equals_in_memory(case, algo):
    shape, chunks, w_shape, kwargs = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    want = fastconv.conv3d(x, w, b, **kwargs, algo=algo)
    lazy = fcd.conv3d(da.from_array(x, chunks=chunks), w, b, **kwargs, algo=algo)
    assert lazy.shape == want.shape and len(lazy.chunks[2]) > 1
    got = lazy.compute(scheduler="threads")
    if algo == "naive":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_ndhwc_and_unbatched():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 7, 5, 3))          # one NDHWC volume
    w = rng.standard_normal((3, 3, 3, 3, 2))       # DHWIO
    want = fastconv.conv3d(x, w, padding=1, layout="NDHWC")
    lazy = fcd.conv3d(da.from_array(x, chunks=(2, 4, 5, 3)), w, padding=1, layout="NDHWC")
    np.testing.assert_allclose(lazy.compute(scheduler="threads"), want, atol=1e-12)


def test_errors_name_the_op():
    x = da.ones((1, 2, 4, 4, 4), chunks=2)
    with pytest.raises(ValueError, match=r"conv3d: groups=3 must divide C_in=2"):
        fcd.conv3d(x, np.ones((3, 1, 3, 3, 3)), groups=3)
    with pytest.raises(TypeError, match=r"conv3d: input must be a dask.array.Array"):
        fcd.conv3d(np.ones((1, 2, 4, 4, 4)), np.ones((3, 2, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"conv3d: algo='gemm' is not known"):
        fcd.conv3d(x, np.ones((3, 2, 3, 3, 3)), algo="gemm")
