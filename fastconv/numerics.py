"""When the FFT algorithm can be trusted.

FFT convolution mixes every input value into every output of its image: one NaN or Inf
spreads over the whole image, and rounding errors scale with the norm of the whole input
rather than with the values under each window. fastconv therefore

* never runs FFT on non-finite input (im2col gives the direct result: NaN and Inf only
  where a window covers them), and
* for ``algo="auto"``, accepts an FFT result only when it meets the documented tolerance
  relative to the largest output; otherwise im2col recomputes it (inputs whose magnitudes
  span many orders, e.g. a huge value where no output window reads it, but every
  transform does).

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
    x64 = x.astype(np.float64, copy=False)
    w64 = w.astype(np.float64, copy=False)
    x_norm = np.sqrt(np.square(x64).sum(axis=tuple(a for a in range(x.ndim) if a != batch_axis)))
    w_norm = np.sqrt(np.square(w64).sum(axis=tuple(a for a in range(w.ndim) if a != out_axis)))
    eps = float(np.finfo(x.dtype).eps)
    return _BOUND_CONSTANT * eps * math.log2(max(transform_points, 2)) * float(x_norm.max()) \
        * float(w_norm.max())


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
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, s, SAMPLES) for s in y.shape]
    worst = max(abs(float(y[n, d, i, j]) - direct_output(x, w, args, n, d, i, j))
                for n, d, i, j in zip(*picks, strict=True))
    return worst <= tol / 4


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
