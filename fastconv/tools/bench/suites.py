"""What the benchmark measures: layer shapes, the suites of them, the algorithms and the
other libraries timed beside fastconv."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastconv.layout import LAYOUTS

#: fastconv's algorithms as ``conv2d(algo=...)`` names them ("auto": its own choice).
ALGOS = ("naive", "im2col", "fft", "winograd", "auto")
#: Other libraries timed on the same arrays when installed (scipy: single-channel only).
EXTRAS = ("torch", "scipy.fftconvolve", "scipy.correlate")
#: Axis orders taking the suite's NCHW input and OIHW weight to NHWC and HWIO.
NHWC_FROM_NCHW = LAYOUTS["NHWC"].from_canonical
HWIO_FROM_OIHW = LAYOUTS["NHWC"].weight_from_canonical


@dataclass(frozen=True)
class Shape:
    """One conv layer: input (n, c, h, w) -> c_out channels, k x k kernel (NCHW).

    ``transposed``: the layer is ``conv_transpose2d`` (weight (c, c_out // groups, k, k),
    output (n, c_out, (h - 1) * stride - 2 * padding + dilation * (k - 1) + 1, ...)),
    timed against torch's conv_transpose2d."""

    name: str
    n: int
    c: int
    h: int
    w: int
    c_out: int
    k: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    transposed: bool = False

    @property
    def op(self) -> str:
        """The fastconv (and torch.nn.functional) function the layer runs."""
        return "conv_transpose2d" if self.transposed else "conv2d"

    def kwargs(self) -> dict:
        """stride, padding, dilation and groups as ``conv2d`` keywords."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def args(self, dtype=np.float32, n: int | None = None, layout: str = "NCHW"):
        """The engine's checked record of this layer (``n`` images instead of ``self.n``
        when given): x (n, c, h, w) and w (c_out, c // groups, k, k), or their NHWC / HWIO
        orders with ``layout="NHWC"``. A transposed layer's record is that of the conv2d
        problem beneath it (whose input gradient it computes: input (n, c_out, H_out,
        W_out), output (n, c, h, w))."""
        from fastconv._args import conv_args_from_shapes, transpose_args_from_shapes

        x_shape = (self.n if n is None else n, self.c, self.h, self.w)
        w_shape = self._w_shape()
        if layout == "NHWC":
            x_shape = tuple(x_shape[i] for i in NHWC_FROM_NCHW)
            w_shape = tuple(w_shape[i] for i in HWIO_FROM_OIHW)
        if self.transposed:
            return transpose_args_from_shapes("bench", x_shape, w_shape, layout=layout,
                                              dtype=dtype, **self.kwargs()).conv
        return conv_args_from_shapes("bench", x_shape, w_shape, layout=layout, dtype=dtype,
                                     **self.kwargs())

    def _w_shape(self) -> tuple[int, int, int, int]:
        if self.transposed:
            return (self.c, self.c_out // self.groups, self.k, self.k)
        return (self.c_out, self.c // self.groups, self.k, self.k)

    def y_shape(self, dtype=np.float32, n: int | None = None) -> tuple[int, int, int, int]:
        """The layer's NCHW output shape (``n`` images instead of ``self.n`` when given)."""
        a = self.args(dtype, n)
        return a.x_shape if self.transposed else a.y_shape

    def arrays(self, dtype=np.float32, seed: int = 0, layout: str = "NCHW"):
        """(x, w): NCHW / OIHW, or NHWC / HWIO (contiguous) with ``layout="NHWC"``; the
        same numbers either way."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.n, self.c, self.h, self.w), dtype=np.float32)
        w = rng.standard_normal(self._w_shape(), dtype=np.float32)
        if layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(NHWC_FROM_NCHW))
            w = np.ascontiguousarray(w.transpose(HWIO_FROM_OIHW))
        return x.astype(dtype, copy=False), w.astype(dtype, copy=False)

    def out_hw(self) -> tuple[int, int]:
        """(h_out, w_out) of the output."""
        return self.y_shape()[2:]

    def flops(self) -> int:
        """Floating-point operations of one forward call on the whole batch."""
        return self.args().flops

    def single_channel(self) -> bool:
        """A plain 2-D filtering problem that scipy.signal can run (valid, stride 1)."""
        return (self.c == self.c_out == self.groups == 1 and self.stride == 1
                and self.dilation == 1 and self.padding == 0 and not self.transposed)


DEFAULT_SUITE = (
    Shape("lenet_c1", 64, 1, 28, 28, 6, 5),
    Shape("lenet_c2", 64, 6, 12, 12, 16, 5),
    Shape("cifar", 64, 32, 32, 32, 32, 3, padding=1),
    Shape("resnet_56", 16, 64, 56, 56, 64, 3, padding=1),
    Shape("resnet_28", 16, 128, 28, 28, 128, 3, padding=1),
    Shape("resnet_14", 16, 256, 14, 14, 256, 3, padding=1),
    Shape("stride2", 16, 64, 56, 56, 128, 3, stride=2, padding=1),
    Shape("pointwise", 16, 256, 14, 14, 64, 1),
    Shape("depthwise", 16, 128, 56, 56, 128, 3, padding=1, groups=128),
    Shape("stem", 8, 3, 224, 224, 64, 7, stride=2, padding=3),
    Shape("dilated", 16, 64, 56, 56, 64, 3, padding=2, dilation=2),
    Shape("bigkernel", 1, 1, 512, 512, 1, 31),
)

#: The default suite's layers with smaller batches (a few minutes on 2 cores).
QUICK_SUITE = tuple(
    Shape(s.name, max(1, s.n // 4), s.c, s.h, s.w, s.c_out, s.k, s.stride, s.padding,
          s.dilation, s.groups) for s in DEFAULT_SUITE)

#: One 256x256 single-channel image, kernel sizes 1..31 ("valid"): where FFT overtakes.
KERNEL_SWEEP = tuple(Shape(f"k{k}", 1, 1, 256, 256, 1, k) for k in range(1, 32))

#: A decoder's upsampling layer: conv_transpose2d 64 -> 32 channels, 4x4 kernel, stride 2,
#: padding 1, 28x28 -> 56x56, batch 16 (as in a convolutional autoencoder or a GAN).
DECODER_SUITE = (
    Shape("decoder_convT", 16, 64, 28, 28, 32, 4, stride=2, padding=1, transposed=True),
)

#: Tiny shapes for the test suite (seconds).
TINY_SUITE = (
    Shape("tiny_conv", 2, 3, 12, 12, 4, 3, padding=1),
    Shape("tiny_dw", 2, 4, 10, 10, 4, 3, padding=1, groups=4),
    Shape("tiny_k5", 1, 1, 24, 24, 1, 5),
    Shape("tiny_convT", 2, 4, 6, 6, 3, 4, stride=2, padding=1, transposed=True),
)

SUITES = {"default": DEFAULT_SUITE, "quick": QUICK_SUITE, "kernel-sweep": KERNEL_SWEEP,
          "decoder": DECODER_SUITE, "tiny": TINY_SUITE}
