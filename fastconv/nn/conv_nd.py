"""Conv1d and Conv3d layers (torch.nn's names, parameters, shapes and initialisation).

Weights are OIW (out, in/groups, k) and OIDHW (out, in/groups, kd, kh, kw), as torch's,
so torch state dicts load as they are; bias (out,). Initialised as torch's: weight
kaiming_uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in)), fan_in = in/groups * kernel volume.
``padding_mode``: "zeros" (the convolution's own zero padding), or "reflect",
"replicate", "circular": the input is first padded by ``padding`` in that mode
(:func:`fastconv.nn.padfold.padded_input`) and convolved without padding, as torch.
``layout``: "NCW" / "NCDHW" (default) or channels-last "NWC" / "NDHWC" data; the weight
keeps torch's shape in every layout (state dicts move between layouts unchanged).
"""

from __future__ import annotations

import numpy as np

from .._args.conv_nd import padding_nd, tuple_arg
from ..layout import get as get_layout
from . import _conv_nd_ops as ops
from .layers import _WeightAndBias, conv_extra_repr
from .padfold import check_padding_mode, padded_input


class _ConvNd(_WeightAndBias):
    rank = 1
    default_layout = "NCW"
    op = staticmethod(ops.conv1d)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, rng=None, dtype=np.float32,
                 layout: str | None = None):
        super().__init__()
        name = type(self).__name__
        self.layout = get_layout(name, layout or self.default_layout, self.rank).name
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.padding_mode = check_padding_mode(name, padding_mode)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = tuple_arg(name, "kernel_size", kernel_size, self.rank, minimum=1)
        self.stride = tuple_arg(name, "stride", stride, self.rank, minimum=1)
        self.dilation = tuple_arg(name, "dilation", dilation, self.rank, minimum=1)
        pads = padding_nd(name, padding, self.kernel_size, self.dilation, self.stride)
        if isinstance(padding, str):
            self.padding = padding
        elif all(lo == hi for lo, hi in pads):
            self.padding = tuple(lo for lo, _ in pads)
        else:
            self.padding = pads
        self._weight_and_bias((out_channels, in_channels // groups, *self.kernel_size),
                              bias, dtype, rng)

    def forward(self, x):
        x, padding = padded_input(x, self.padding_mode, self.padding, self.rank,
                                  self.layout, kernel_size=self.kernel_size,
                                  dilation=self.dilation, op=type(self).__name__)
        dims = get_layout(type(self).__name__, self.layout, self.rank)
        w = self.weight if dims.is_canonical else self.weight.permute(
            *dims.weight_from_canonical)           # the layout's weight order, a view
        return self.op(x, w, self.bias, self.stride, padding, self.dilation, self.groups,
                       layout=self.layout)

    def extra_repr(self) -> str:
        tail = "" if self.layout == self.default_layout else f", layout={self.layout!r}"
        return conv_extra_repr(self, self.rank) + tail


class Conv1d(_ConvNd):
    """1-D convolution layer over (N, C, W) signals: weight (out, in/groups, k), bias
    (out,); a 2-D (C, W) input is one unbatched signal.

    >>> import numpy as np, fastconv
    >>> layer = fastconv.nn.Conv1d(2, 4, 3, padding=1)
    >>> layer.weight.shape, layer(np.ones((5, 2, 16), np.float32)).shape
    ((4, 2, 3), (5, 4, 16))
    """


class Conv3d(_ConvNd):
    """3-D convolution layer over (N, C, D, H, W) volumes: weight (out, in/groups, kd,
    kh, kw), bias (out,); a 4-D input is one unbatched volume.

    >>> import numpy as np, fastconv
    >>> layer = fastconv.nn.Conv3d(2, 4, 3, padding=1)
    >>> layer.weight.shape, layer(np.ones((1, 2, 4, 4, 4), np.float32)).shape
    ((4, 2, 3, 3, 3), (1, 4, 4, 4, 4))
    """

    rank = 3
    default_layout = "NCDHW"
    op = staticmethod(ops.conv3d)
