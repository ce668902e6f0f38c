"""When the FFT algorithm can be trusted.

FFT convolution mixes every input value into every output of its image: one NaN or Inf
spreads over the whole image, and rounding errors scale with the norm of the whole input
rather than with the values under each window. fastconv therefore

* never runs FFT on non-finite input (im2col gives the direct result: NaN and Inf only
  where a window covers them), and
* for ``algo="auto"``, accepts an FFT result outright when it meets the documented
  tolerance relative to the largest output; otherwise im2col recomputes it and the more
  accurate of the two results is kept: the one closer to ``SAMPLES`` outputs computed
  directly in float64 (:func:`closer_result`). im2col wins on inputs whose magnitudes
  span many orders (a huge value where no output window reads it, but every transform
  does); the FFT wins on cancellation-heavy float32 input (a large offset under a
  zero-mean kernel, where the direct float32 sum loses more digits than the transform).

The check has two steps. First the usual a-priori bound for FFT convolution,
max|err| <= c * eps * log2(P) * max_n ||x_n|| * max_d ||w_d|| (P points in the 2-D
transform), with c = 1: measured errors on random, wide-range, offset and outlier inputs
stayed below 0.12 times it. The bound is pessimistic, so when it fails, a sample of outputs
is recomputed directly in float64 and the FFT result is kept when their largest error is
within a quarter of the tolerance.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import config

#: Documented accuracy of algo="fft": max |y - y_direct| / max |y_direct| per call.
FFT_TOLERANCE = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-10}

_BOUND_CONSTANT = 1.0


def all_finite(*arrays) -> bool:
    """True when no array holds NaN or Inf (None entries are skipped)."""
    return all(a is None or bool(np.isfinite(a).all()) for a in arrays)


def fft_error_bound(x: np.ndarray, w: np.ndarray, transform_points: int, batch_axis: int = 0,
                    out_axis: int = 0) -> float:
    """Upper estimate of max |y_fft - y| for one conv2d call (absolute, in x's units).

    x: the (batched) input, w: the weight; ``batch_axis``/``out_axis`` name the image and
    output-channel axes (0 for NCHW input and OIHW weight; 3 for an HWIO weight)."""
    if x.size == 0 or w.size == 0:
        return 0.0
    eps = float(np.finfo(x.dtype).eps)
    return _BOUND_CONSTANT * eps * math.log2(max(transform_points, 2)) \
        * _largest_norm(x, batch_axis) * _largest_norm(w, out_axis)


def _largest_norm(a: np.ndarray, axis: int) -> float:
    """The largest Euclidean norm, summed in float64, of a's slices along ``axis`` (one
    image's values, one output channel's kernel), in one compiled pass over a 4-D view
    (unit axes added to fewer, trailing ones merged from more): numpy's float64 copy,
    square and sum took 60-460 us of an ``algo="auto"`` FFT call of 0.5 ms on a 256 x 256
    image (each a fresh array that malloc maps and unmaps)."""
    v = np.moveaxis(a, axis, 0)
    if v.ndim > 4:
        v = v.reshape(v.shape[:3] + (-1,))
    return _largest_norm4(v.reshape(v.shape + (1,) * (4 - v.ndim)))


@njit(cache=True, fastmath=config.FASTMATH)
def _largest_norm4(a):
    """max over i of sqrt(sum of a[i]**2) for a 4-D array (any strides), in float64 (finite
    values: the FFT runs on finite input only)."""
    best = 0.0
    for i in range(a.shape[0]):
        s = 0.0
        for j in range(a.shape[1]):
            for k in range(a.shape[2]):
                for q in range(a.shape[3]):
                    v = np.float64(a[i, j, k, q])
                    s += v * v
        best = max(best, s)
    return math.sqrt(best)


SAMPLES = 256


def fft_result_trusted(y: np.ndarray, bound: float, x=None, w=None, args=None,
                       seed: int = 0) -> bool:
    """Whether an FFT result ``y`` (NCHW) meets FFT_TOLERANCE: by the a-priori ``bound``,
    or else by recomputing ``SAMPLES`` random outputs directly from x and w (NCHW/OIHW)."""
    scale = float(np.abs(y).max()) if y.size else 0.0
    tol = FFT_TOLERANCE[y.dtype] * scale
    if bound <= tol:
        return True
    if x is None:
        return False
    return sampled_error(y, x, w, args, seed) <= tol / 4


def _picks(shape, seed: int) -> list[tuple[int, int, int, int]]:
    """``SAMPLES`` random (n, d, i, j) output positions, the same for a given seed."""
    rng = np.random.default_rng(seed)
    return list(zip(*(rng.integers(0, s, SAMPLES).tolist() for s in shape), strict=True))


def sampled_error(y: np.ndarray, x, w, args, seed: int = 0, bias=None) -> float:
    """max |y - y_direct| over ``SAMPLES`` random outputs of ``y`` (NCHW), y_direct from
    the formula in float64 on x and w (NCHW/OIHW), plus ``bias`` (C_out,) when given. NaN
    when a sampled output of y is not finite."""
    return sampled_errors((y,), x, w, args, seed, bias)[0]


def sampled_errors(ys, x, w, args, seed: int = 0, bias=None) -> list[float]:
    """:func:`sampled_error` of each result in ``ys`` (same shape), the direct outputs
    computed once for all of them."""
    worst = [0.0] * len(ys)
    for n, d, i, j in _picks(ys[0].shape, seed):
        want = direct_output(x, w, args, n, d, i, j) + (0.0 if bias is None else float(bias[d]))
        for k, y in enumerate(ys):
            err = abs(float(y[n, d, i, j]) - want)
            if not err <= worst[k]:       # also catches NaN
                worst[k] = err
    return worst


def closer_result(x, w, bias, args, first: np.ndarray, second: np.ndarray) -> bool:
    """Whether ``first`` is strictly closer than ``second`` to the float64 direct result,
    measured on the same ``SAMPLES`` outputs; both conv2d results of ``args`` (bias
    included) in the caller's layout. A non-finite sampled error never wins.

    >>> import numpy as np, fastconv
    >>> from fastconv._args import conv_args_from_shapes
    >>> x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 2, 2), np.float32)
    >>> args = conv_args_from_shapes("conv2d", x.shape, w.shape)
    >>> y = fastconv.conv2d(x, w)
    >>> closer_result(x, w, None, args, y, y + 1e-3), closer_result(x, w, None, args, y, y)
    (True, False)
    """
    dims = args.dims
    xn, wn = dims.to_canonical_view(x), dims.weight_to_canonical_view(w)
    e1, e2 = sampled_errors([dims.to_canonical_view(y) for y in (first, second)], xn, wn,
                            args, bias=bias)
    return bool(e1 < e2) or (math.isfinite(e1) and not math.isfinite(e2))


def direct_output(x, w, args, n: int, d: int, i: int, j: int) -> float:
    """y[n, d, i, j] from the formula in float64 (bias excluded); x NCHW, w OIHW."""
    (pt, _), (pl, _) = args.padding
    rows = i * args.stride[0] + np.arange(args.kh) * args.dilation[0] - pt
    cols = j * args.stride[1] + np.arange(args.kw) * args.dilation[1] - pl
    ra, cb = (rows >= 0) & (rows < args.h), (cols >= 0) & (cols < args.w)
    cg = args.c_in // args.groups
    g = d // (args.c_out // args.groups)
    patch = x[n, g * cg:(g + 1) * cg][:, rows[ra]][:, :, cols[cb]].astype(np.float64)
    return float((patch * w[d][:, ra][:, :, cb].astype(np.float64)).sum())
