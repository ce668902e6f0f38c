"""conv_transpose2d and its backward on the GPU: conv2d's GPU machinery, reused.

As on the CPU (``fastconv.conv_transpose``), a transposed convolution is conv2d's input
gradient on the conv2d problem beneath it (``TransposeArgs.conv``): the forward is the
GPU conv2d backward's grad_x alone (x plays grad_y), then the bias; its gradients are a
GPU conv2d forward of grad_y (grad_x) and the GPU conv2d weight gradient with the roles
swapped (x plays grad_y, grad_y the input). Output rows and columns past the conv2d
problem's reach (output_padding beyond the cropped padding) get only the bias, and
grad_y's there are left out of grad_x and grad_w.
"""

from __future__ import annotations

from numba import cuda

from .. import _args
from . import _layout
from ._conv import backward_nchw, check_algo, forward_nchw, resolve_algorithm
from ._device import Residency, host_spec, launch
from ._reduce import channel_sum


@cuda.jit
def _place(src, bias, has_bias, out):
    """out[n, c, h, w] = src[n, c, h, w] (0 where h or w lies past src's) + bias[c] when
    ``has_bias``; src (N, C, Hs, Ws) with Hs <= H and Ws <= W, out (N, C, H, W)."""
    c_all, h_all, w_all = out.shape[1], out.shape[2], out.shape[3]
    hs, ws = src.shape[2], src.shape[3]
    for t in range(cuda.grid(1), out.shape[0] * c_all * h_all * w_all, cuda.gridsize(1)):
        w = t % w_all
        r = t // w_all
        h = r % h_all
        r //= h_all
        c = r % c_all
        n = r // c_all
        v = src[n, c, h, w] if h < hs and w < ws else out.dtype.type(0)
        if has_bias:
            v += bias[c]
        out[n, c, h, w] = v


def _output_nchw(x, w, bias, a: _args.TransposeArgs, algo):
    """y (N, C_out, H_out, W_out) for device arrays x (N, C_in, H, W), w (C_in,
    C_out/groups, kh, kw) (contiguous) and bias (C_out,) or None."""
    if a.conv is None or a.n == 0:  # no input reaches the output: the bias alone
        reached = cuda.device_array((a.n, a.c_out, 0, 0), a.dtype)
    else:
        reached, _, _ = backward_nchw(x, None, w, a.conv, resolve_algorithm(a.conv, algo),
                                      (True, False, False))
        if not a.cropped and bias is None:
            return reached
    out = cuda.device_array((a.n, a.c_out, a.h_out, a.w_out), a.dtype)
    has_bias = int(bias is not None)
    launch(_place, out.size, reached, bias if has_bias else cuda.device_array(1, a.dtype),
           has_bias, out)
    return out


def conv_transpose2d(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, layout="NCHW", algo="auto"):
    """fastconv.conv_transpose2d on the GPU: same arguments, shapes and errors.

    x: (N, C_in, H, W) for "NCHW", (N, H, W, C_in) for "NHWC" (3-D without N); w: (C_in,
    C_out/groups, kh, kw) or (kh, kw, C_out/groups, C_in); bias (C_out,) or None. Returns
    y in x's layout, (N, C_out, H_out, W_out) or (N, H_out, W_out, C_out). Residency as in
    ``fastconv.cuda._conv.conv2d``; algo "auto", "naive" or "im2col" picks the kernels of
    conv2d's input gradient (the direct gather, or the column-gradient GEMM and col2im).
    float32 and float64.
    """
    op = "conv_transpose2d"
    check_algo(op, algo)
    _, _, _, a = _args.transpose_arrays(op, host_spec(x), host_spec(w), host_spec(bias),
                                        stride, padding, output_padding, groups, dilation,
                                        layout)
    res = Residency(x, w, bias)
    dx = _layout.to_nchw(res.to_device(x), a.dims)
    dw = _layout.weight_to_oihw(res.to_device(w), a.dims)
    db = _layout.contiguous(res.to_device(bias)) if bias is not None else None
    y = _output_nchw(dx, dw, db, a, algo)
    return res.result(_layout.from_nchw(y, a.dims, a.unbatched))


def _gradients_nchw(gy, x, w, a: _args.TransposeArgs, algo, needs):
    """(grad_x (N, C_in, H, W), grad_w (C_in, C_out/groups, kh, kw), grad_bias (C_out,))
    for contiguous device arrays gy (N, C_out, H_out, W_out), x and w; those not in
    ``needs`` are None."""
    need_x, need_w, need_b = needs
    gx = gw = gb = None
    if a.conv is None or a.n == 0:
        gx = _layout.zeros((a.n, a.c_in, a.h, a.w), a.dtype) if need_x else None
        gw = _layout.zeros(tuple(w.shape), a.dtype) if need_w else None
    elif need_x or need_w:
        conv = a.conv
        algo = resolve_algorithm(conv, algo)
        # the conv2d problem's input: grad_y less the rows and columns no input reaches
        reached = _layout.contiguous(gy[:, :, :a.reach_h, :a.reach_w]) if a.cropped else gy
        if need_x:
            gx = forward_nchw(reached, w, None, conv, algo)
        if need_w:
            _, gw, _ = backward_nchw(x, reached, w, conv, algo, (False, True, False))
    if need_b and a.n == 0:
        gb = _layout.zeros(a.c_out, a.dtype)
    elif need_b:
        gb = cuda.device_array(a.c_out, a.dtype)
        channel_sum(gy.reshape((a.n, a.c_out, a.h_out * a.w_out)), gb)
    return gx, gw, gb


def conv_transpose2d_backward(grad_y, x, w, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, layout="NCHW", algo="auto",
                              needs_input_grad=(True, True, True)):
    """fastconv.conv_transpose2d_backward on the GPU -> (grad_x, grad_w, grad_bias).

    Same arguments, shapes and errors as on the CPU; residency as in
    :func:`conv_transpose2d`. grad_x is the GPU conv2d forward of grad_y with w, grad_w
    the GPU conv2d weight gradient with x as its grad_y and grad_y as its input,
    grad_bias a per-channel sum of grad_y; needs_input_grad (three bools) leaves the
    others out (None, not computed).
    """
    op = "conv_transpose2d_backward"
    needs = _args.check_needs_input_grad(op, needs_input_grad)
    check_algo(op, algo)
    sx, sw, _, a = _args.transpose_arrays(op, host_spec(x), host_spec(w), None, stride,
                                          padding, output_padding, groups, dilation, layout)
    _args.transpose_grad_y(op, host_spec(grad_y), sx, sw, a)
    res = Residency(grad_y, x, w)
    dgy = _layout.to_nchw(res.to_device(grad_y), a.dims)
    dx = _layout.to_nchw(res.to_device(x), a.dims) if needs[1] else None
    dw = _layout.weight_to_oihw(res.to_device(w), a.dims)
    gx, gw, gb = _gradients_nchw(dgy, dx, dw, a, algo, needs)
    return (res.result(_layout.from_nchw(gx, a.dims, a.unbatched)) if needs[0] else None,
            res.result(_layout.weight_from_oihw(gw, a.dims)) if needs[1] else None,
            res.result(gb))
