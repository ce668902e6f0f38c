"""Layers (torch.nn's names, arguments and default initialisation). Data is NCHW,
conv weights OIHW, linear weights (out_features, in_features).

The image layers take ``layout`` ("NCHW" by default, or "NHWC": (N, H, W, C) data,
channels last, torch's channels_last memory format as a shape). Parameters keep torch's
shapes in both layouts (Conv2d's weight is OIHW), so state dicts move between layouts and
to torch unchanged; :class:`Flatten` with layout="NHWC" flattens in the NCHW order.

Every layer with weights takes ``rng`` (numpy Generator; fastconv's default generator,
seeded by ``fastconv.manual_seed``, when None) and ``dtype`` (float32 by default).
"""

from __future__ import annotations

import math

import numpy as np

from .._args import padding_pairs, pair
from ..layout import get as get_layout
from . import functional as F
from . import fused, init
from .module import Module, Parameter, Sequential, call_unbatched
from .padfold import check_padding_mode, padded_input


class _WeightAndBias(Module):
    """A layer with a weight of shape (out, in, ...) and an optional bias (out,),
    initialised as torch's Conv2d and Linear: weight kaiming_uniform(a=sqrt(5)), i.e.
    U(+-1/sqrt(fan_in)), and bias U(+-1/sqrt(fan_in)), where fan_in = in * the product
    of the remaining weight axes (the kernel)."""

    def _weight_and_bias(self, weight_shape: tuple, bias: bool, dtype, rng) -> None:
        """Register ``weight`` (and ``bias``, or None) as uninitialised parameters of
        ``dtype``, then fill them by :meth:`reset_parameters` from ``rng``."""
        self.weight = Parameter(np.empty(weight_shape, dtype=np.dtype(dtype)))
        if bias:
            self.bias = Parameter(np.empty(weight_shape[:1], dtype=np.dtype(dtype)))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng=None) -> None:
        """Draw the weight, then the bias, from ``rng`` (fastconv's default generator
        when None)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=rng)
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight.shape)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound, rng=rng)


def _canonical_padding(padding, kernel, dilation, stride):
    """'valid'/'same' kept as words; numbers validated and given as (h, w) when symmetric,
    ((top, bottom), (left, right)) otherwise."""
    if isinstance(padding, str):
        padding_pairs("Conv2d", padding, kernel, dilation, stride)  # validates the word
        return padding
    (t, b), (lft, r) = padding_pairs("Conv2d", padding, kernel, dilation, stride)
    return (t, lft) if (t, lft) == (b, r) else ((t, b), (lft, r))


def conv_extra_repr(layer, rank: int) -> str:
    """torch's repr of a Conv1d/2d/3d ``layer`` of ``rank`` spatial axes: channels,
    kernel_size and stride, then padding, dilation, groups, padding_mode and bias where
    they differ from the defaults."""
    s = (f"{layer.in_channels}, {layer.out_channels}, kernel_size={layer.kernel_size}, "
         f"stride={layer.stride}")
    if layer.padding not in ((0,) * rank, "valid"):
        s += f", padding={layer.padding}"
    if layer.dilation != (1,) * rank:
        s += f", dilation={layer.dilation}"
    if layer.groups != 1:
        s += f", groups={layer.groups}"
    if layer.padding_mode != "zeros":
        s += f", padding_mode={layer.padding_mode}"
    return s + ("" if layer.bias is not None else ", bias=False")


class Conv2d(_WeightAndBias):
    """2-D convolution layer: weight (out, in/groups, kh, kw), bias (out,); input
    (N, C, H, W), or (N, H, W, C) with layout="NHWC" (the weight stays OIHW).

    Initialised as torch: weight kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)),
    bias U(+-1/sqrt(fan_in)), fan_in = in/groups * kh * kw.

    ``padding_mode``: "zeros" (the convolution's own zero padding), or "reflect",
    "replicate", "circular": the input is first padded by ``padding`` in that mode
    (:func:`fastconv.nn.functional.pad`'s rules) and convolved without padding, as torch.
    """

    takes_images = True  # a 3-D input is one unbatched image

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, rng=None, dtype=np.float32,
                 layout: str = "NCHW"):
        super().__init__()
        self.padding_mode = check_padding_mode("Conv2d", padding_mode)
        self.layout = get_layout("Conv2d", layout).name
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair("Conv2d", "kernel_size", kernel_size, minimum=1)
        self.stride = pair("Conv2d", "stride", stride, minimum=1)
        self.dilation = pair("Conv2d", "dilation", dilation, minimum=1)
        self.padding = _canonical_padding(padding, self.kernel_size, self.dilation,
                                          self.stride)
        self._weight_and_bias((out_channels, in_channels // groups, *self.kernel_size),
                              bias, dtype, rng)

    def forward(self, x):
        x, padding = padded_input(x, self.padding_mode, self.padding, 2, self.layout,
                                  kernel_size=self.kernel_size, dilation=self.dilation,
                                  op="Conv2d")
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                        self.groups, layout=self.layout, weight_layout="OIHW")

    def extra_repr(self) -> str:
        return conv_extra_repr(self, 2) + _layout_repr(self)


class Linear(_WeightAndBias):
    """y = x W^T + b, weight (out, in). Initialised as torch (U(+-1/sqrt(in)) for both)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None,
                 dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._weight_and_bias((out_features, in_features), bias, dtype, rng)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class BatchNorm2d(Module):
    """Batch norm over (N, H, W) per channel, with running statistics as buffers.

    Training: normalise with the batch mean and biased variance; update ``running_mean``
    / ``running_var`` (ndarrays, in place) with ``momentum`` and the unbiased variance.
    Evaluation: normalise with the running statistics. momentum=None uses the cumulative
    average (1 / num_batches_tracked), as torch. Input (N, C, H, W), or (N, H, W, C) with
    layout="NHWC".
    """

    takes_images = True  # a 3-D input is one unbatched image

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, dtype=np.float32,
                 layout: str = "NCHW"):
        super().__init__()
        self.layout = get_layout("BatchNorm2d", layout).name
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        dtype = np.dtype(dtype)
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype))
            self.bias = Parameter(np.zeros(num_features, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def forward(self, x):
        return self._normalise(x, False)

    def forward_relu(self, x):
        """relu(self(x)) in one pass (:func:`fastconv.nn.fused.batch_norm_relu`)."""
        return self._normalise(x, True)

    def forward_add_relu(self, x, residual):
        """relu(self(x) + residual) in one pass: a residual block's end
        (:func:`fastconv.nn.fused.batch_norm_add_relu`)."""
        return self._normalise(x, True, residual)

    def _normalise(self, x, relu: bool, residual=None):
        if getattr(x, "ndim", 0) == 3:  # one unbatched image: a batch of one
            if residual is not None:
                return fused.add_relu(self(x), residual)
            return call_unbatched(lambda t: self._normalise(t, relu), x)
        use_batch_stats = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            tracked = self._buffers["num_batches_tracked"]   # 0-d, counted in place
            tracked += 1
            if self.momentum is None:
                momentum = 1.0 / float(tracked)
        # running_mean/var are None when not tracked: batch statistics, no update
        if residual is not None:
            return fused.batch_norm_add_relu(x, residual, self.running_mean,
                                             self.running_var, self.weight, self.bias,
                                             use_batch_stats, momentum, self.eps,
                                             layout=self.layout)
        norm = fused.batch_norm_relu if relu else F.batch_norm
        return norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                    use_batch_stats, momentum, self.eps, layout=self.layout)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}"
                + _layout_repr(self))


def _layout_repr(module) -> str:
    """", layout='NHWC'" for a channels-last layer, nothing for NCHW."""
    return "" if module.layout == "NCHW" else f", layout={module.layout!r}"


class _Pool2d(Module):
    """The window arguments that MaxPool2d and AvgPool2d share, kept as given (the
    functional op checks them) and shown by ``repr``."""

    takes_images = True  # a 3-D input is one unbatched image

    def __init__(self, kernel_size, stride, padding, ceil_mode: bool, layout: str):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode
        self.layout = get_layout(type(self).__name__, layout).name

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}" + _layout_repr(self))


class MaxPool2d(_Pool2d):
    """Max pooling (see :func:`fastconv.nn.functional.max_pool2d`): (N, C, H, W) ->
    (N, C, H_out, W_out); stride None means stride = kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode: bool = False, *, layout: str = "NCHW"):
        super().__init__(kernel_size, stride, padding, ceil_mode, layout)
        self.dilation = dilation

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, layout=self.layout)

    def fused_after(self, prev: Module):
        """After a ReLU: self(relu(x)) as relu(self(x)), one op
        (:func:`fastconv.nn.fused.relu_max_pool2d`)."""
        if not (_plain(prev, ReLU) and _plain(self, MaxPool2d)):
            return None
        return lambda x: (fused.relu_max_pool2d(x, self.kernel_size, self.stride,
                                                self.padding, self.dilation, self.ceil_mode,
                                                layout=self.layout)
                          if getattr(x, "ndim", 0) == 4 else self(prev(x)))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, dilation={self.dilation}, "
                f"ceil_mode={self.ceil_mode}")


class AvgPool2d(_Pool2d):
    """Average pooling (see :func:`fastconv.nn.functional.avg_pool2d`): (N, C, H, W) ->
    (N, C, H_out, W_out); stride None means stride = kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, *, layout: str = "NCHW"):
        super().__init__(kernel_size, stride, padding, ceil_mode, layout)
        self.count_include_pad = count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, layout=self.layout)


class GlobalAvgPool2d(Module):
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1); NHWC: (N, H, W, C) ->
    (N, 1, 1, C)."""

    takes_images = True  # a 3-D input is one unbatched image

    def __init__(self, *, layout: str = "NCHW"):
        super().__init__()
        self.layout = get_layout(type(self).__name__, layout).name

    def forward(self, x):
        return F.global_avg_pool2d(x, layout=self.layout)

    def extra_repr(self) -> str:
        return _layout_repr(self).removeprefix(", ")


class AdaptiveAvgPool2d(GlobalAvgPool2d):
    """torch's AdaptiveAvgPool2d restricted to output_size 1 (global average pooling)."""

    def __init__(self, output_size=1, *, layout: str = "NCHW"):
        super().__init__(layout=layout)
        F.check_adaptive_output_size("AdaptiveAvgPool2d", output_size)
        self.output_size = output_size

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}" + _layout_repr(self)


class ReLU(Module):
    """max(x, 0). ``inplace`` is accepted for torch compatibility; ops never run in place."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x):
        return F.relu(x)

    def fused_after(self, prev: Module):
        """After a BatchNorm2d: relu(prev(x)) in its normalising pass (``forward_relu``);
        after a Linear: in the same op (``linear(..., relu=True)``)."""
        if not _plain(self, ReLU):
            return None
        if _plain(prev, BatchNorm2d):
            return prev.forward_relu
        if _plain(prev, Linear):
            return lambda x: F.linear(x, prev.weight, prev.bias, relu=True)
        return None


class Flatten(Module):
    """Merge axes start_dim..end_dim; layout="NHWC" flattens a 4-D (N, H, W, C) input in
    the order of its NCHW form, as torch flattens a channels_last tensor (see
    :func:`fastconv.nn.functional.flatten`)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, layout: str = "NCHW"):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim
        self.layout = get_layout("Flatten", layout).name

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim, layout=self.layout)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}" + _layout_repr(self)


class Dropout(Module):
    """Zero elements with probability p while training (scale the rest by 1/(1-p))."""

    def __init__(self, p: float = 0.5, *, rng=None):
        super().__init__()
        F.check_probability("Dropout", p)
        self.p, self.rng = p, rng

    def forward(self, x):
        return F.dropout(x, self.p, self.training, rng=self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout2d(Module):
    """Zero whole channels with probability p while training (scale the rest by
    1/(1-p)); input (N, C, H, W), or (N, H, W, C) with layout="NHWC". ``inplace`` is
    accepted for torch compatibility; ops never run in place."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, layout: str = "NCHW",
                 rng=None):
        super().__init__()
        F.check_probability("Dropout2d", p)
        self.p, self.layout, self.rng = p, get_layout("Dropout2d", layout).name, rng

    def forward(self, x):
        return F.dropout2d(x, self.p, self.training, layout=self.layout, rng=self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}" + _layout_repr(self)


class Identity(Module):
    """Returns its input unchanged; any constructor arguments are ignored (torch's)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Upsample(Module):
    """Resize 4-D input to ``size`` or by ``scale_factor`` (see
    :func:`fastconv.nn.functional.interpolate` for the rules); mode "nearest" or
    "bilinear". The arguments are checked on the first call, as torch."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest",
                 align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                 *, layout: str = "NCHW"):
        super().__init__()
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor
        self.layout = get_layout("Upsample", layout).name

    def forward(self, x):
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor, layout=self.layout)

    def extra_repr(self) -> str:
        what = f"size={self.size!r}" if self.size is not None else \
            f"scale_factor={self.scale_factor!r}"
        return f"{what}, mode={self.mode!r}"


class CrossEntropyLoss(Module):
    """Softmax cross entropy of logits (N, C) against integer targets (N,)."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        F.check_reduction("CrossEntropyLoss", reduction)
        self.reduction = reduction

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.reduction)


def _plain(m: Module, cls) -> bool:
    """Whether m is a ``cls`` whose forward is cls's own (a subclass may compute
    something else, so it is not fused)."""
    return isinstance(m, cls) and type(m).forward is cls.forward


class BasicBlock(Module):
    """ResNet basic block: relu(f(x) + shortcut(x)) with f = conv3x3-bn-relu-conv3x3-bn.

    The shortcut is the identity, or a 1x1 conv (stride ``stride``, no bias) + batch
    norm when the stride is not 1 or the channel count changes (torchvision's layout and
    names: conv1, bn1, conv2, bn2, downsample). ``layout`` is that of every layer.
    """

    takes_images = True  # a 3-D input is one unbatched image

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, rng=None,
                 dtype=np.float32, layout: str = "NCHW"):
        super().__init__()
        kw = {"dtype": dtype, "layout": layout}
        self.conv1 = Conv2d(in_planes, planes, 3, stride, 1, bias=False, rng=rng, **kw)
        self.bn1 = BatchNorm2d(planes, **kw)
        self.relu = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False, rng=rng, **kw)
        self.bn2 = BatchNorm2d(planes, **kw)
        if stride != 1 or in_planes != planes:
            self.downsample = Sequential(
                Conv2d(in_planes, planes, 1, stride, bias=False, rng=rng, **kw),
                BatchNorm2d(planes, **kw))
        else:
            self.downsample = None

    def forward(self, x):
        # relu(bn1(.)) and relu(bn2(.) + shortcut) each run as one fused op
        # (fastconv.nn.fused)
        out = self.bn1.forward_relu(self.conv1(x))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.bn2.forward_add_relu(self.conv2(out), shortcut)
