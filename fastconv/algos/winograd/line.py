"""conv1d by Winograd F(4, 3) over the padded signal's phase sequences.

A kernel of k taps is padded with zeros to k' = 3r taps (r = ceil(k / 3)) and read as
three outer taps r apart, each with r inner offsets: tap t = b + r a (a < 3, b < r).
Output j = r u + rho (rho < r) then reads the padded signal xp at r (u + a) + rho + b, so
with the sequences X_s[v] = xp[r v + s] (s = rho + b < 2r - 1)

    y[r u + rho] = sum_b sum_a w[b + r a] X_{rho + b}[u + a],

for every rho a sum over b of 3-tap convolutions along u, which F(4, 3) computes from
6-point tiles of u: V = B^T (tile of X_s) once per sequence, U = G (the 3 outer taps of
inner offset b), and for each rho and each of the 6 transformed points one GEMM over
(b, c_in) of length r C_in, M = V U, then y = A^T M. That is k'/2 multiplications per
output and input-output channel pair instead of k (the 9-tap audio layer: 4.5 instead
of 9). The GEMM of (rho, point) reads the tiles' sequences rho .. rho + r - 1, which
``V``'s layout (point, tile, sequence, channel) keeps side by side: a strided matrix
BLAS reads in place, no copy.

Serves stride 1, dilation 1, one group, k >= 3, float32 and float64, layouts NCW and
NWC (the image's padded copy is channels-first either way). Images are split over the
threads (with fewer images than threads, each image's tiles), each thread with its own
workspaces and its GEMMs on one BLAS thread.

>>> import numpy as np
>>> from fastconv._args.conv_nd import conv_nd_args_from_shapes
>>> a = conv_nd_args_from_shapes("conv1d", (1, 1, 6), (1, 1, 3), rank=1, padding=1,
...                              dtype=np.float64)
>>> y = forward(np.arange(6.0).reshape(1, 1, 6), np.array([[[1.0, 0.0, -1.0]]]), None, a)
>>> np.round(y, 12)
array([[[-1., -2., -2., -2., -2.,  4.]]])
"""

from __future__ import annotations

import math
from dataclasses import replace

import numba
import numpy as np
from numba import njit

from ... import _blas, config
from ..._memory import allocate
from .._common import workspace
from .f4 import _at6, _bt6

#: G of F(4, 3) (interpolation points 0, +-1, +-2 and infinity).
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])

#: Bytes of transformed input tiles per chunk (kept in the per-core L2 with the GEMM
#: outputs and the signal's span).
CHUNK_BYTES = 1 << 19


def why_not(a) -> str | None:
    """Why conv1d problem ``a`` cannot run here, or None."""
    if a.stride[0] != 1 or a.dilation[0] != 1:
        return "needs stride 1 and dilation 1"
    if a.groups != 1:
        return "needs groups=1"
    if a.kernel[0] < 3:
        return f"needs a kernel of at least 3 taps (got {a.kernel[0]})"
    if a.dtype not in (np.float32, np.float64):
        return f"needs float32 or float64 (got {a.dtype})"
    return None


def phases(a) -> int:
    """r: the kernel's inner offsets (its taps padded to 3r)."""
    return -(-a.kernel[0] // 3)


def tiles(a) -> int:
    """6-point tiles along u per sequence: ceil(ceil(W_out / r) / 4)."""
    return math.ceil(math.ceil(a.out[0] / phases(a)) / 4)


def kernel_transform(w, a) -> np.ndarray:
    """U (6, r C_in, C_out) from NCW weights ``w`` (C_out, C_in, k): U[xi, b C_in + c, o]
    = sum_a G[xi, a] w'[o, c, b + r a], computed in float64 and rounded once."""
    r = phases(a)
    wp = np.zeros((a.c_out, a.c_in, 3 * r))
    wp[:, :, :a.kernel[0]] = w
    g = wp.reshape(a.c_out, a.c_in, 3, r)
    u = np.einsum("xa,ocab->xbco", G4, g)
    return np.ascontiguousarray(u.reshape(6, r * a.c_in, a.c_out), dtype=a.dtype)


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def _input_tiles(xp, r, tau0, v):
    """v[xi, t, s, c] = (B^T X_s tile tau0 + t)[xi] of channel c: X_s[4 tau + e] =
    xp[c, r (4 tau + e) + s], e < 6. xp (C, length) is the padded signal."""
    two, four, five = xp.dtype.type(2), xp.dtype.type(4), xp.dtype.type(5)
    n_t, n_s = v.shape[1], v.shape[2]
    for t in range(n_t):  # channels innermost: v's writes contiguous
        base = 4 * r * (tau0 + t)
        for s in range(n_s):
            p = base + s
            for c in range(xp.shape[0]):
                o = _bt6(xp[c, p], xp[c, p + r], xp[c, p + 2 * r], xp[c, p + 3 * r],
                         xp[c, p + 4 * r], xp[c, p + 5 * r], two, four, five)
                for xi in range(6):
                    v[xi, t, s, c] = o[xi]


@njit(cache=True, nogil=True)  # no fastmath: its "reassoc" folds isfinite to True
def _output_tiles(m, tau0, bias, y):
    """y[o, r (4 (tau0 + t) + i) + rho] = (A^T m[rho, :, t, o])[i] + bias[o], positions
    past y's width skipped. m (r, 6, tiles, C_out); y (C_out, W_out), any strides.
    Returns whether every value written is finite."""
    finite = True
    r, n_t, c_out = m.shape[0], m.shape[2], m.shape[3]
    width = y.shape[1]
    two, four, eight = m.dtype.type(2), m.dtype.type(4), m.dtype.type(8)
    for t in range(n_t):
        for rho in range(r):
            base = r * 4 * (tau0 + t) + rho
            for o in range(c_out):
                q = _at6(m[rho, 0, t, o], m[rho, 1, t, o], m[rho, 2, t, o],
                         m[rho, 3, t, o], m[rho, 4, t, o], m[rho, 5, t, o],
                         two, four, eight)
                for i in range(4):
                    j = base + r * i
                    if j < width:
                        val = q[i] + bias[o]
                        y[o, j] = val
                        finite &= np.isfinite(val)
    return finite


def _chunk_tiles(a) -> int:
    r = phases(a)
    per_tile = 6 * (2 * r - 1) * a.c_in * a.dtype.itemsize
    return max(1, min(tiles(a), CHUNK_BYTES // per_tile))


def _image(xb, u, bias, a, yb, first, end) -> bool:
    """Tiles ``first`` .. ``end`` - 1 of one image: ``xb`` (C_in, W) channels-first (any
    strides) into ``yb`` (C_out, W_out) (any strides); whether every output is finite."""
    r, n_tiles, lo = phases(a), tiles(a), a.padding[0][0]
    n_s = 2 * r - 1
    length = r * (4 * n_tiles + 2) + n_s
    xp = workspace("conv1d-wino-x", a.c_in * length, a.dtype).reshape(a.c_in, length)
    xp[:, :lo] = 0
    xp[:, lo + a.size[0]:] = 0
    xp[:, lo:lo + a.size[0]] = xb
    span = _chunk_tiles(a)
    v = workspace("conv1d-wino-v", 6 * span * n_s * a.c_in, a.dtype)
    m = workspace("conv1d-wino-m", r * 6 * span * a.c_out, a.dtype)
    rows, finite = r * a.c_in, True
    for t0 in range(first, end, span):
        n = min(span, end - t0)
        vc = v[:6 * n * n_s * a.c_in].reshape(6, n, n_s, a.c_in)
        mc = m[:r * 6 * n * a.c_out].reshape(r, 6, n, a.c_out)
        _input_tiles(xp, r, t0, vc)
        flat = vc.reshape(6, n, n_s * a.c_in)
        for rho in range(r):
            np.matmul(flat[:, :, rho * a.c_in:rho * a.c_in + rows], u, out=mc[rho])
        finite &= _output_tiles(mc, t0, bias, yb)
    return finite


def forward(x, w, bias, a) -> np.ndarray:
    """conv1d of ``x`` (N, C_in, W) NCW or (N, W, C_in) NWC with NCW weights ``w``
    (C_out, C_in, k) and ``bias`` (C_out,) or None: y in ``a.layout``, or None where an
    output is not finite (a tile's transforms spread one NaN or Inf over the whole tile:
    the caller computes such a problem another way, for the formula's pattern)."""
    nwc = a.layout == "NWC"
    shape = (a.n, a.out[0], a.c_out) if nwc else (a.n, a.c_out, a.out[0])
    y = allocate("conv1d", "output", shape, a.dtype)
    u = kernel_transform(w, a)
    b = np.zeros(a.c_out, a.dtype) if bias is None else np.asarray(bias, a.dtype)
    xs = x.transpose(0, 2, 1) if nwc else x
    ys = y.transpose(0, 2, 1) if nwc else y
    threads = numba.get_num_threads()
    n_tiles = tiles(a)
    by_image = a.n >= threads or n_tiles < 2 * threads
    threads = max(1, min(threads, a.n if by_image else n_tiles))
    finite = [True] * threads

    def part(k):
        """Thread k's run of images, or (fewer images than threads) its run of every
        image's tiles."""
        if by_image:
            for i in range(a.n * k // threads, a.n * (k + 1) // threads):
                finite[k] &= _image(xs[i], u, b, a, ys[i], 0, n_tiles)
            return
        first, end = n_tiles * k // threads, n_tiles * (k + 1) // threads
        for i in range(a.n):
            finite[k] &= _image(xs[i], u, b, a, ys[i], first, end)

    if threads > 1:
        _blas.on_threads(part, threads)
    else:
        with _blas.one_blas_thread():
            part(0)
    return y if all(finite) else None


def input_gradient_problem(a):
    """The conv1d forward problem whose output is the input gradient of problem ``a``
    (stride 1): grad_y as its input, the kernel reversed with its channels swapped,
    padding k - 1 - p per side; None where a padding exceeds k - 1 (it would need a
    crop)."""
    k = a.kernel[0]
    lo, hi = a.padding[0]
    if lo > k - 1 or hi > k - 1:
        return None
    return replace(a, c_in=a.c_out, c_out=a.c_in, size=a.out, out=a.size,
                   padding=((k - 1 - lo, k - 1 - hi),))


def input_gradient(gy, w, a):
    """grad_x of conv1d problem ``a`` from ``gy`` (its output's shape and layout) and NCW
    weights ``w`` (C_out, C_in, k), by :func:`forward` on
    :func:`input_gradient_problem`; None where that problem is None or an output is not
    finite."""
    t = input_gradient_problem(a)
    if t is None:
        return None
    return forward(gy, np.ascontiguousarray(w.transpose(1, 0, 2)[:, :, ::-1]), None, t)


def worth_it(a) -> bool:
    """Whether "auto" runs conv1d through this algorithm: it applies and the problem has
    enough work per image for its transforms and GEMMs to pay (C_in C_out k W_out at
    least 2^20 multiply-adds per image)."""
    return why_not(a) is None and a.c_in * a.c_out * a.kernel[0] * a.out[0] >= 1 << 20

