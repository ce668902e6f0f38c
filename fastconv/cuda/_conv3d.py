"""conv3d and conv3d_backward on the GPU: validate (as the CPU does), move, launch.

Two algorithms, as for conv2d: "naive" (``_conv3d_kernels``' direct kernels, one thread
per output or gradient element) and "im2col" (the 3-D unfold ``_vol2col``, the blocked
GEMM per group and batch chunk through ``_im2col``, the gathering fold ``_col2vol`` for
grad_x); "auto" applies the GPU conv2d's thin-GEMM rule to the 3-D kernel's taps.
Kernels take contiguous NCDHW activations and OIDHW weights; NDHWC / DHWIO arrays are
permuted on the device (as a 4-D permutation of merged axes) and back.
"""

from __future__ import annotations

import math

from .. import _args, config
from .._args.conv_nd import ConvNdArgs, check_grad_y, conv_nd_arrays
from . import _conv3d_kernels as K
from . import _im2col, _layout
from ._conv import check_algo, forward_with, gradient_buffers
from ._device import Residency, host_spec, launch
from ._reduce import channel_sum


def choose_algorithm(a: ConvNdArgs) -> str:
    """"naive" when the GEMM would be thin (``fastconv.cuda._conv.choose_algorithm``'s
    thresholds on C_in/groups * kd*kh*kw taps and C_out/groups), else "im2col"."""
    taps = a.c_in // a.groups * math.prod(a.kernel)
    if taps < config.CUDA_DIRECT_MAX_TAPS or a.c_out // a.groups <= \
            config.CUDA_DIRECT_MAX_COUT:
        return "naive"
    return "im2col"


def _geometry(a: ConvNdArgs):
    """(sd, sh, sw, pd, ph, pw, rd, rh, rw): stride, front/top/left padding, dilation."""
    return (*a.stride, *(p[0] for p in a.padding), *a.dilation)


def unfolding(a: ConvNdArgs) -> _im2col.Unfolding:
    """The 3-D problem for the im2col path (``_vol2col`` / ``_col2vol``)."""
    geo = _geometry(a) + a.out

    def unfold(x, cols, n0):
        launch(K._vol2col, cols.size, x, cols, n0, *a.kernel, *geo)

    def fold(cols, gx, n0, nc):
        cols8 = cols.reshape((a.c_in, *a.kernel, nc, *a.out))
        launch(K._col2vol, nc * a.c_in * math.prod(a.size), cols8, cols8, gx, n0, nc,
               *a.kernel, *geo)

    return _im2col.Unfolding(a.n, a.c_in, a.c_out, a.groups, math.prod(a.kernel),
                             math.prod(a.out), a.dtype, unfold, fold)


# ------------------------------------------------------------------------- layouts
def _merged(d, shape, perm):
    """``d`` (contiguous) viewed as the 4-D ``shape``, permuted by ``perm``."""
    return _layout.permute(d.reshape(shape), perm)


def to_ncdhw(d, a: ConvNdArgs):
    """Contiguous (N, C, D, H, W) from a 4-D (unbatched) or 5-D activation in a.layout."""
    d = _layout.contiguous(d)
    if d.ndim == 4:
        d = d.reshape((1, *d.shape))
    if a.dims.is_canonical:
        return d
    n, c = d.shape[0], d.shape[4]
    return _merged(d, (n, math.prod(d.shape[1:4]), c, 1), (0, 2, 1, 3)).reshape(
        (n, c, *d.shape[1:4]))


def from_ncdhw(d, a: ConvNdArgs):
    """The (N, C, D, H, W) result ``d`` in a.layout (without N when unbatched)."""
    if not a.dims.is_canonical:
        n, c, vol = d.shape[0], d.shape[1], tuple(d.shape[2:])
        d = _merged(d, (n, c, math.prod(vol), 1), (0, 2, 1, 3)).reshape((n, *vol, c))
    return d.reshape(tuple(d.shape[1:])) if a.unbatched else d


def weight_to_oidhw(d, a: ConvNdArgs):
    """Contiguous (O, I, kd, kh, kw) from a weight in a.layout's order (OIDHW / DHWIO)."""
    d = _layout.contiguous(d)
    if a.dims.is_canonical:
        return d
    ksize, i, o = tuple(d.shape[:3]), d.shape[3], d.shape[4]
    return _merged(d, (math.prod(ksize), i, o, 1), (2, 1, 0, 3)).reshape((o, i, *ksize))


def weight_from_oidhw(d, a: ConvNdArgs):
    """The (O, I, kd, kh, kw) weight gradient ``d`` in a.layout's weight order."""
    if a.dims.is_canonical:
        return d
    o, i, ksize = d.shape[0], d.shape[1], tuple(d.shape[2:])
    return _merged(d, (o, i, math.prod(ksize), 1), (2, 1, 0, 3)).reshape((*ksize, i, o))


# ------------------------------------------------------------------------ the ops
def forward_ncdhw(x, w, bias, a: ConvNdArgs, algo: str):
    """y (N, C_out, od, oh, ow) for contiguous device arrays x, w and bias or None."""
    return forward_with(K._conv3d_direct, _geometry(a), unfolding(a), x, w, bias, a, algo)


def backward_ncdhw(gy, x, w, a: ConvNdArgs, algo: str, needs):
    """(grad_x, grad_w, grad_bias) of contiguous NCDHW / OIDHW device arrays; those not
    in ``needs`` are None."""
    need_x, need_w, need_b = needs
    (gx, gw, gb), empty = gradient_buffers(a, needs)
    if empty:
        return gx, gw, gb
    geo = _geometry(a)
    if algo == "naive":
        g = a.groups
        if need_x:
            gy6 = gy.reshape((a.n, g, a.c_out // g, *a.out))
            w6 = w.reshape((g, a.c_out // g, a.c_in // g, *a.kernel))
            launch(K._conv3d_direct_grad_x, gx.size, gy6, w6, gx, 0, a.n, *a.kernel, *geo,
                   *a.out)
        if need_w:
            launch(K._conv3d_direct_grad_w, gw.size, gy, x, gw, *geo, g)
    elif need_x or need_w:
        _im2col.backward(gy, x, w, gx, gw, unfolding(a))
    if need_b:
        channel_sum(gy.reshape((a.n, a.c_out, math.prod(a.out))), gb)
    return gx, gw, gb


def conv3d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCDHW",
           algo="auto"):
    """fastconv.conv3d on the GPU: same arguments, shapes and errors (float32, float64).

    x: (N, C_in, D, H, W) for "NCDHW", (N, D, H, W, C_in) for "NDHWC" (4-D without N); w:
    (C_out, C_in/groups, kd, kh, kw) or (kd, kh, kw, C_in/groups, C_out); bias (C_out,)
    or None. Returns y in x's layout; residency as in ``fastconv.cuda._conv.conv2d``;
    algo "auto" (:func:`choose_algorithm`), "naive" or "im2col".
    """
    op = "conv3d"
    check_algo(op, algo)
    _, _, _, a = conv_nd_arrays(op, host_spec(x), host_spec(w), host_spec(bias), stride,
                                padding, dilation, groups, layout, rank=3, half=False)
    res = Residency(x, w, bias)
    algo = choose_algorithm(a) if algo == "auto" else algo
    db = _layout.contiguous(res.to_device(bias)) if bias is not None else None
    y = forward_ncdhw(to_ncdhw(res.to_device(x), a), weight_to_oidhw(res.to_device(w), a),
                      db, a, algo)
    return res.result(from_ncdhw(y, a))


def conv3d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCDHW", algo="auto", needs_input_grad=(True, True, True)):
    """fastconv.conv3d_backward on the GPU -> (grad_x, grad_w, grad_bias): the shapes and
    layouts of x, w and (C_out,); needs_input_grad (three bools) leaves the others out
    (None, not computed: no column-gradient GEMM and fold without grad_x, no unfold of x
    without grad_w). Residency as in :func:`conv3d`."""
    op = "conv3d_backward"
    needs = _args.check_needs_input_grad(op, needs_input_grad)
    check_algo(op, algo)
    _, _, _, a = conv_nd_arrays(op, host_spec(x), host_spec(w), None, stride, padding,
                                dilation, groups, layout, rank=3, half=False)
    gys = check_grad_y(op, host_spec(grad_y), a, half=False)
    _args.check_same_dtype(op, input=host_spec(x), weight=host_spec(w), grad_y=gys)
    res = Residency(grad_y, x, w)
    algo = choose_algorithm(a) if algo == "auto" else algo
    gx, gw, gb = backward_ncdhw(to_ncdhw(res.to_device(grad_y), a),
                                to_ncdhw(res.to_device(x), a) if needs[1] else None,
                                weight_to_oidhw(res.to_device(w), a), a, algo, needs)
    return (res.result(from_ncdhw(gx, a)) if needs[0] else None,
            res.result(weight_from_oidhw(gw, a)) if needs[1] else None,
            res.result(gb))
