"""Transposed convolution for networks: the autograd op and the ConvTranspose2d layer.

``conv_transpose2d`` is one :class:`~fastconv.autograd.Function` on
:func:`fastconv.conv_transpose2d` / :func:`fastconv.conv_transpose2d_backward`;
:class:`ConvTranspose2d` is torch.nn.ConvTranspose2d (names, weight shape (in,
out/groups, kh, kw), default initialisation), so state dicts carry over both ways.
"""

from __future__ import annotations

import math

import numpy as np

from .. import conv_transpose as _ct
from .. import devices
from .._args import pair, transpose_output_size
from ..autograd import Function, Tensor
from ..layout import get as get_layout
from . import init
from .module import Module, Parameter


class ConvTranspose2dFunction(Function):
    gpu = True  # device arrays run fastconv.cuda.conv_transpose2d (and its backward)

    @staticmethod
    def forward(ctx, x, w, b, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                layout="NCHW", algo="auto"):
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, output_padding, groups, dilation)
        ctx.layout, ctx.algo, ctx.has_bias = layout, algo, b is not None
        return _ct.conv_transpose2d(x, w, b, *ctx.args, layout=layout, algo=algo,
                                    device=devices.array_device(x))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return _ct.conv_transpose2d_backward(
            g, x, w, *ctx.args, layout=ctx.layout, algo=ctx.algo,
            needs_input_grad=(need_x, need_w, need_b and ctx.has_bias),
            device=devices.array_device(g))


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,
                     groups=1, dilation=1, *, layout="NCHW", algo="auto") -> Tensor:
    """2-D transposed convolution, differentiable (see :func:`fastconv.conv_transpose2d`
    for shapes and arguments; torch's argument order).

    >>> import numpy as np
    >>> from fastconv import Tensor, nn
    >>> x = Tensor(np.ones((1, 2, 3, 3)), requires_grad=True)
    >>> w = Tensor(np.ones((2, 1, 4, 4)), requires_grad=True)
    >>> y = nn.functional.conv_transpose2d(x, w, stride=2, padding=1)
    >>> y.shape
    (1, 1, 6, 6)
    >>> y.sum().backward()
    >>> x.grad.shape, w.grad.shape
    ((1, 2, 3, 3), (2, 1, 4, 4))
    """
    return ConvTranspose2dFunction.apply(
        input, weight, bias, stride=stride, padding=padding, output_padding=output_padding,
        groups=groups, dilation=dilation, layout=layout, algo=algo)


class ConvTranspose2d(Module):
    """2-D transposed convolution layer, as torch.nn.ConvTranspose2d: weight (in_channels,
    out_channels/groups, kh, kw) ((kh, kw, out/groups, in) with layout="NHWC"), bias
    (out_channels,).

    Initialised as torch: weight kaiming_uniform(a=sqrt(5)) and bias, both
    U(+-1/sqrt(fan_in)) with torch's fan_in of this weight, out_channels/groups * kh * kw.
    ``padding_mode`` must be "zeros" (torch accepts no other here either). The forward
    takes torch's optional ``output_size`` ((H, W), or with N and C in front), which picks
    the output_padding that gives it.

    >>> import numpy as np
    >>> from fastconv import nn
    >>> up = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1,
    ...                         rng=np.random.default_rng(0))
    >>> up.weight.shape, up(np.zeros((16, 64, 28, 28), np.float32)).shape
    ((64, 32, 4, 4), (16, 32, 56, 56))
    >>> up(np.zeros((1, 64, 7, 7), np.float32), output_size=(15, 15)).shape
    (1, 32, 15, 15)
    """

    takes_images = True  # a 3-D input is one unbatched image

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, output_padding=0, groups: int = 1, bias: bool = True,
                 dilation=1, padding_mode: str = "zeros", *, layout: str = "NCHW",
                 rng=None, dtype=np.float32):
        super().__init__()
        op = "ConvTranspose2d"
        if padding_mode != "zeros":
            raise ValueError(f"{op}: padding_mode={padding_mode!r} is not supported; only "
                             "'zeros' is (as in torch)")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{op}: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(op, "kernel_size", kernel_size, minimum=1)
        self.stride = pair(op, "stride", stride, minimum=1)
        self.padding = pair(op, "padding", padding, minimum=0)
        self.output_padding = pair(op, "output_padding", output_padding, minimum=0)
        self.dilation = pair(op, "dilation", dilation, minimum=1)
        self.padding_mode = padding_mode
        self.layout = get_layout(op, layout).name
        dims = get_layout(op, self.layout)
        shape = dims.weight_shape(in_channels, out_channels // groups, *self.kernel_size)
        self.weight = Parameter(np.empty(shape, np.dtype(dtype)))
        if bias:
            self.bias = Parameter(np.empty(out_channels, np.dtype(dtype)))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng=None) -> None:
        """Draw the weight (in torch's (in, out/groups, kh, kw) order, whatever the
        layout), then the bias, from ``rng`` (fastconv's default generator when None)."""
        dims = get_layout("ConvTranspose2d", self.layout)
        canonical = Tensor(np.empty(dims.canonical_weight_shape(self.weight.shape),
                                    self.weight.dtype))
        init.kaiming_uniform_(canonical, a=math.sqrt(5), rng=rng)
        self.weight.data[...] = dims.weight_from_canonical_view(canonical.data)
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(canonical.shape)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound, rng=rng)

    def forward(self, x, output_size=None):
        output_padding = self.output_padding if output_size is None else \
            self._output_padding(x, output_size)
        return conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation,
                                layout=self.layout)

    def _output_padding(self, x, output_size) -> tuple[int, int]:
        """torch's rule: the output_padding that makes the output ``output_size`` (its
        last two entries, (H, W)); each must lie in [0, max(stride, dilation))."""
        size = tuple(int(s) for s in output_size)
        if len(size) not in (2, 3, 4):
            raise ValueError(f"ConvTranspose2d: output_size={output_size!r} must be (H, W), "
                             "optionally with N and C in front")
        dims = get_layout("ConvTranspose2d", self.layout)
        shape = x.shape if len(x.shape) == 4 else (1,) + tuple(x.shape)
        hw = [shape[a] for a in dims.spatial_axes]
        pads = []
        for i, axis in enumerate(("height", "width")):
            low = transpose_output_size(hw[i], self.kernel_size[i], self.stride[i],
                                        self.padding[i], 0, self.dilation[i])
            high = low + max(self.stride[i], self.dilation[i]) - 1
            if not low <= size[-2 + i] <= high:
                raise ValueError(f"ConvTranspose2d: output_size={output_size!r} gives output "
                                 f"{axis} {size[-2 + i]}, outside the reachable range "
                                 f"[{low}, {high}] for input {axis} {hw[i]}")
            pads.append(size[-2 + i] - low)
        return pads[0], pads[1]

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        for name, default in (("padding", (0, 0)), ("output_padding", (0, 0)),
                              ("dilation", (1, 1)), ("groups", 1)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.layout != "NCHW":
            s += f", layout={self.layout!r}"
        return s + ("" if self.bias is not None else ", bias=False")
