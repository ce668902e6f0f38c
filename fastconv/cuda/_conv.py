"""conv2d and conv2d_backward on the GPU: validate (as the CPU does), move, launch, package.

The kernels work on contiguous NCHW activations and OIHW weights (``_layout`` converts
other layouts on the device); ``args`` is the problem's :class:`fastconv._args.ConvArgs`.
"""

from __future__ import annotations

from numba import cuda

from .. import _args, config
from ..algos import registry
from . import _conv_kernels as K
from . import _im2col, _layout
from ._device import Residency, host_spec, launch
from ._reduce import channel_sum

# ----------------------------------------------------------------------------------------
# The GPU's algorithms: the registry's entries that run on device "cuda", the check of
# ``algo`` and the "auto" rule.

ALGORITHMS = registry.names("cuda")


def check_algo(op: str, algo) -> str:
    """``algo`` when it is "auto" or one of :data:`ALGORITHMS`, else ValueError naming the
    op and the algorithms available on device='cuda'."""
    if algo != "auto" and algo not in ALGORITHMS:
        extra = " (fft runs on the CPU only)" if algo == "fft" else ""
        raise ValueError(f"{op}: algo={algo!r} is not available on device='cuda'{extra}; "
                         f"acceptable algorithms there are 'auto', "
                         f"{', '.join(repr(a) for a in ALGORITHMS)}")
    return algo


def choose_algorithm(args: _args.ConvArgs) -> str:
    """The CUDA "auto" rule: direct ("naive") kernel when the im2col GEMM would be thin.

    Thin means fewer than ``config.CUDA_DIRECT_MAX_TAPS`` taps per output
    (C_in/groups * kh * kw; depthwise and 1-channel layers) or at most
    ``config.CUDA_DIRECT_MAX_COUT`` output channels per group: most of each GEMM tile
    would then be padding. The thresholds are not calibrated on hardware.
    """
    taps = args.c_in // args.groups * args.kh * args.kw
    if taps < config.CUDA_DIRECT_MAX_TAPS or args.c_out // args.groups <= \
            config.CUDA_DIRECT_MAX_COUT:
        return "naive"
    return "im2col"


def resolve_algorithm(args: _args.ConvArgs, algo: str) -> str:
    """The algorithm that runs: ``algo`` itself, or the "auto" rule's choice."""
    return choose_algorithm(args) if algo == "auto" else algo


# ----------------------------------------------------------------------------------------
def _geometry(args):
    """(sh, sw, pt, pl, rh, rw): stride, top and left padding, dilation, as the kernels
    take them."""
    return (args.stride[0], args.stride[1], args.padding[0][0], args.padding[1][0],
            args.dilation[0], args.dilation[1])


def unfolding(args) -> _im2col.Unfolding:
    """The 2-D problem for the im2col path: ``_im2col`` unfolds, ``_col2im`` folds
    (column layout in ``_conv_kernels``)."""
    geo = _geometry(args)

    def unfold(x, cols, n0):
        launch(K._im2col, cols.size, x, cols, n0, args.kh, args.kw, *geo, args.h_out,
               args.w_out)

    def fold(cols, gx, n0, nc):
        cols6 = cols.reshape((args.c_in, args.kh, args.kw, nc, args.h_out, args.w_out))
        launch(K._col2im, nc * args.c_in * args.h * args.w, cols6, cols6, gx, n0, nc,
               args.kh, args.kw, *geo, args.h_out, args.w_out)

    return _im2col.Unfolding(args.n, args.c_in, args.c_out, args.groups, args.kh * args.kw,
                             args.h_out * args.w_out, args.dtype, unfold, fold)


def forward_nchw(x, w, bias, args, algo):
    """y (N, C_out, H_out, W_out) for contiguous device arrays x (N, C_in, H, W), w
    (C_out, C_in/groups, kh, kw) and bias (C_out,) or None; ``algo`` "naive" or "im2col"."""
    return forward_with(K._conv_direct, _geometry(args), unfolding(args), x, w, bias, args,
                        algo)


def forward_with(direct, geometry, unfold, x, w, bias, args, algo):
    """The forward of any rank on contiguous device arrays in canonical order: the direct
    kernel ``direct`` (launched over y with ``geometry`` and the groups) for "naive", else
    im2col with the ``unfold`` record (``_im2col.Unfolding``)."""
    y = cuda.device_array(args.y_shape, args.dtype)
    has_bias = int(bias is not None)
    if bias is None:
        bias = cuda.device_array(1, args.dtype)  # never read
    if y.size == 0:
        return y
    if algo == "naive":
        launch(direct, y.size, x, w, bias, has_bias, y, *geometry, args.groups)
    else:
        _im2col.forward(x, w, bias, has_bias, y, unfold)
    return y


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCHW",
           algo="auto"):
    """fastconv.conv2d on the GPU: same arguments, shapes and errors.

    x: (N, C_in, H, W) for "NCHW", (N, H, W, C_in) for "NHWC" (3-D without N); w:
    (C_out, C_in/groups, kh, kw) OIHW or (kh, kw, C_in/groups, C_out) HWIO; bias: (C_out,)
    or None. Returns y in x's layout: (N, C_out, H_out, W_out) or (N, H_out, W_out, C_out).
    Arrays may be numpy arrays (copied to the device and the result copied back) or CUDA
    device arrays (the result stays on the device as a numba device array).
    algo: "auto" (:func:`choose_algorithm`), "naive" (direct kernel, one thread per
    output) or "im2col" (im2col kernel + tiled shared-memory GEMM per group, in batch
    chunks within config.WORKSPACE_BYTES).
    """
    op = "conv2d"
    check_algo(op, algo)
    _, _, _, args = _args.conv_arrays(op, host_spec(x), host_spec(w), host_spec(bias), stride,
                                      padding, dilation, groups, layout)
    res = Residency(x, w, bias)
    algo = resolve_algorithm(args, algo)
    dx = _layout.to_nchw(res.to_device(x), args.dims)
    dw = _layout.weight_to_oihw(res.to_device(w), args.dims)
    db = _layout.contiguous(res.to_device(bias)) if bias is not None else None
    y = forward_nchw(dx, dw, db, args, algo)
    return res.result(_layout.from_nchw(y, args.dims, args.unbatched))


def gradient_buffers(args, needs):
    """((grad_x, grad_w, grad_bias), empty): device arrays of the canonical input, weight
    and (C_out,) shapes for the gradients ``needs`` asks for (None for the others), and
    whether the batch is empty (the arrays are then zeros, the gradients' final value)."""
    shapes = (args.x_shape, args.w_shape, args.c_out)
    make = _layout.zeros if args.n == 0 else cuda.device_array
    return tuple(make(shape, args.dtype) if need else None
                 for shape, need in zip(shapes, needs, strict=True)), args.n == 0


def backward_nchw(gy, x, w, args, algo, needs=(True, True, True)):
    """(grad_x (N, C_in, H, W), grad_w (C_out, C_in/groups, kh, kw), grad_bias (C_out,))
    for contiguous device arrays gy (N, C_out, H_out, W_out), x and w as in
    :func:`forward_nchw`; ``needs`` (three bools) says which to compute: the others are
    None and cost nothing."""
    need_x, need_w, need_b = needs
    (gx, gw, gb), empty = gradient_buffers(args, needs)
    if empty:
        return gx, gw, gb
    if algo == "naive":
        g = args.groups
        geo = _geometry(args)
        if need_x:
            gy5 = gy.reshape((args.n, g, args.c_out // g, args.h_out, args.w_out))
            w5 = w.reshape((g, args.c_out // g, args.c_in // g, args.kh, args.kw))
            launch(K._conv_direct_grad_x, gx.size, gy5, w5, gx, 0, args.n, args.kh, args.kw,
                   *geo, args.h_out, args.w_out)
        if need_w:
            launch(K._conv_direct_grad_w, gw.size, gy, x, gw, *geo, g)
    elif need_x or need_w:
        _im2col.backward(gy, x, w, gx, gw, unfolding(args))
    if need_b:
        channel_sum(gy.reshape((args.n, args.c_out, args.h_out * args.w_out)), gb)
    return gx, gw, gb


def conv2d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCHW", algo="auto", needs_input_grad=(True, True, True)):
    """fastconv.conv2d_backward on the GPU -> (grad_x, grad_w, grad_bias).

    Same arguments, shapes and errors as on the CPU; residency as in :func:`conv2d`.
    needs_input_grad (three bools, as on the CPU): the gradients left out are None and
    not computed (without grad_x no column gradient GEMM and no col2im; without grad_w
    no im2col of x).
    grad_y has conv2d's output shape; grad_x and grad_w have the shapes and layout of x
    and w, grad_bias is (C_out,).
    "naive": one thread per gradient element (gather, no atomics); "im2col": per batch
    chunk, grad_w += grad_y^T @ cols^T and grad_cols = w^T @ grad_y^T (tiled GEMMs), then
    a gathering col2im. grad_bias is a per-channel block reduction.
    """
    op = "conv2d_backward"
    needs = _args.check_needs_input_grad(op, needs_input_grad)
    check_algo(op, algo)
    sx, sw, _, args = _args.conv_arrays(op, host_spec(x), host_spec(w), None, stride, padding,
                                        dilation, groups, layout)
    grad_y_spec = _args.check_array(op, "grad_y", host_spec(grad_y))
    _args.check_same_dtype(op, input=sx, weight=sw, grad_y=grad_y_spec)
    _args.batched_grad_y(op, grad_y_spec, args, "conv2d")
    res = Residency(grad_y, x, w)
    algo = resolve_algorithm(args, algo)
    dgy = _layout.to_nchw(res.to_device(grad_y), args.dims)
    dx = _layout.to_nchw(res.to_device(x), args.dims)
    dw = _layout.weight_to_oihw(res.to_device(w), args.dims)
    gx, gw, gb = backward_nchw(dgy, dx, dw, args, algo, needs)
    return (res.result(_layout.from_nchw(gx, args.dims, args.unbatched)) if needs[0] else None,
            res.result(_layout.weight_from_oihw(gw, args.dims)) if needs[1] else None,
            res.result(gb))

