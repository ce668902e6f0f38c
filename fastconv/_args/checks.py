"""Checks shared by every op's canonical record: arrays, dtypes, ints, flags and pairs,
padding, groups, activation shapes, layouts and devices. Errors name the op, the rule
and the values."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from .. import layout as _layout

LAYOUTS = tuple(_layout.LAYOUTS)
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Accepted by the CPU ops (``half=True``), which compute it in float32 (:func:`widen`).
HALF = np.dtype(np.float16)
DEVICES = ("cpu", "cuda")


def plain_float(a) -> bool:
    """Whether ``a`` is a plain host ndarray of float32 or float64 (``DTYPES``): what
    the autograd ops' fast paths take as it is, without the public functions'
    conversions."""
    return type(a) is np.ndarray and a.dtype in DTYPES


def same_padding(k: int, dilation: int) -> tuple[int, int]:
    """'same' padding for one axis: r*(k-1) zeros in total, floor of half before."""
    total = dilation * (k - 1)
    return total // 2, total - total // 2


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_layout(op: str, layout) -> str:
    """``layout`` if it names a 2-D layout ("NCHW", "NHWC"); ValueError otherwise."""
    return _layout.get(op, layout).name


def activation_dims(op: str, shape, layout: str) -> tuple[int, int, int, int, bool]:
    """(n, c, h, w, unbatched): the canonical sizes of a 4-D activation shape, or of a 3-D
    one (an unbatched image, n = 1), in ``layout`` (a valid layout name)."""
    shape = tuple(shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"{op}: input must be 4-D (batched) or 3-D (unbatched) in layout "
                         f"{layout}, got {len(shape)}-D shape {shape}")
    unbatched = len(shape) == 3
    n, c, h, w = _layout.LAYOUTS[layout].canonical_shape((1,) + shape if unbatched else shape)
    return n, c, h, w, unbatched


def looks_channels_last(shape, layout: str) -> bool:
    """Whether a 3-D or 4-D ``shape`` given as NCHW looks like a channels-last image: its
    last axis is 1, 3 or 4 (gray, RGB, RGBA) and at most a quarter of each of the two
    axes before it, e.g. (480, 640, 3)."""
    shape = tuple(shape)
    return (layout == "NCHW" and len(shape) in (3, 4) and shape[-1] in (1, 3, 4)
            and 4 * shape[-1] <= min(shape[-3], shape[-2]))


def layout_hint(shape, layout: str) -> str:
    """"; a (480, 640, 3) array looks channels-last: pass layout='NHWC'" when
    :func:`looks_channels_last`, "" otherwise: the tail of a shape error."""
    if not looks_channels_last(shape, layout):
        return ""
    return f"; a {tuple(shape)} array looks channels-last: pass layout='NHWC'"


def warn_channels_last(op: str, shape, layout: str) -> None:
    """A UserWarning when an NCHW input :func:`looks_channels_last` (pooling runs it as
    given: a (480, 640, 3) photo would be read as 480 channels of 640x3 images)."""
    if looks_channels_last(shape, layout):
        c, h, w = tuple(shape)[-3:]
        warnings.warn(f"{op}: input of shape {tuple(shape)} is read as layout 'NCHW' ({c} "
                      f"channels of {h}x{w} images), but it looks channels-last: pass "
                      "layout='NHWC' for an (H, W, C) image", UserWarning, stacklevel=3)


def plane_axis(layout: str) -> int:
    """Where a one-channel axis goes to make a 2-D (H, W) image 3-D in ``layout``: 0 for
    (1, H, W) in NCHW, -1 for (H, W, 1) in NHWC."""
    return -1 if _layout.LAYOUTS[layout].channels_last else 0


def check_flag(op: str, name: str, value) -> bool:
    """``value`` as a bool; TypeError unless it is a bool (numpy's included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name}={value!r} must be a bool")
    return bool(value)


def check_device(op: str, device) -> str:
    if device not in DEVICES:
        raise ValueError(f"{op}: device={device!r} is not supported; acceptable devices are "
                         f"{', '.join(repr(x) for x in DEVICES)}")
    return device


def check_array(op: str, name: str, a, half: bool = False) -> np.ndarray:
    """``a`` as a plain ndarray of float32/float64, or float16 when ``half`` (TypeError
    otherwise); views are accepted.

    A plain ndarray passes as it is (one type check). Anything else goes through
    :func:`as_ndarray`: ndarray subclasses and objects offering ``__array__``, the buffer
    protocol or ``__dlpack__`` (a CPU torch tensor, a memoryview, an array.array) become
    plain ndarrays sharing their memory; nested lists convert as numpy converts them (a
    copy), and so does a float array of non-native byte order (a native copy).

    >>> check_array("op", "x", [[1.0, 2.0]])
    array([[1., 2.]])
    >>> check_array("op", "x", {})
    Traceback (most recent call last):
    ...
    TypeError: op: x must be an array-like convertible to a numpy array, got dict
    """
    if type(a) is not np.ndarray:
        a = as_ndarray(op, name, a)
    if a.dtype not in DTYPES:
        a = _native_float(op, name, a, half)
    return a


def _native_float(op: str, name: str, a: np.ndarray, half: bool) -> np.ndarray:
    """``a`` when float16 is accepted (``half``), a native-byte-order copy of a non-native
    accepted dtype; TypeError for any other dtype."""
    native = a.dtype.newbyteorder("=")
    if native not in DTYPES and not (half and native == HALF):
        raise TypeError(f"{op}: {name} has dtype {a.dtype}; accepted dtypes are float32 and "
                        "float64" + (" (and float16 on the CPU)" if native == HALF else ""))
    return a if native == a.dtype else a.astype(native)


def widen(*arrays) -> tuple[bool, tuple]:
    """(half, arrays): whether the call is float16 (its first array is; the checks made
    them share one dtype), and then float32 copies of the arrays (None stays None): the
    CPU ops compute float16 in float32 and round the results once (:func:`narrow`)."""
    if arrays[0].dtype != HALF:
        return False, arrays
    return True, tuple(None if a is None else a.astype(np.float32) for a in arrays)


def narrow(result):
    """A float16 op's ``result`` (an array, None or a tuple of them) with its float32
    arrays rounded to float16 (float64 statistics and int64 indices as they are)."""
    if isinstance(result, tuple):
        return tuple(narrow(r) for r in result)
    if result is not None and result.dtype == np.float32:
        return result.astype(HALF)
    return result


def as_ndarray(op: str, name: str, a) -> np.ndarray:
    """A plain ndarray of ``a``, any dtype, without a copy where numpy can share memory.

    ndarray subclasses become base-class views (a masked array with masked elements is
    refused: its mask would be lost; so is a dask array, whose conversion would compute
    it); objects with ``__dlpack__`` but no ``__array__`` go
    through ``np.from_dlpack``; everything else through ``np.asarray``. TypeError naming
    the op and the argument when ``a`` does not convert to a numeric array (None, str,
    dict, a GPU tensor, ...)."""
    if isinstance(a, np.ndarray):
        if isinstance(a, np.ma.MaskedArray) and np.ma.is_masked(a):
            raise TypeError(f"{op}: {name} is a masked array with masked elements; fill them "
                            "first (a.filled(value))")
        return a.view(np.ndarray)
    if hasattr(a, "__dask_graph__"):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray or an in-memory array-like, "
                        f"got a lazy {type(a).__name__} (dask); call .compute() first")
    reason = ""
    if a is not None and not isinstance(a, (str, bytes)):
        try:
            if hasattr(a, "__dlpack__") and not hasattr(a, "__array__"):
                out = np.from_dlpack(a)
            else:
                out = np.asarray(a)
            if out.dtype.kind in "biufc":
                return out
        except Exception as e:  # noqa: BLE001  (any failure to convert is the caller's)
            reason = f" ({type(e).__name__}: {e})"
    raise TypeError(f"{op}: {name} must be an array-like convertible to a numpy array, got "
                    f"{type(a).__name__}{reason}")


def check_same_dtype(op: str, **arrays) -> np.dtype:
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in dtypes.items())
        raise TypeError(f"{op}: inputs must share one dtype (float32 or float64), got {listing}")
    return next(iter(dtypes.values()))


def pair(op: str, name: str, value, *, minimum: int) -> tuple[int, int]:
    """An int or a length-2 sequence of ints, each >= minimum, as an (h, w) pair."""
    if _is_int(value):
        vals = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        if len(value) != 2:
            raise ValueError(f"{op}: {name}={tuple(value)!r} must be an int or a pair (h, w), "
                             f"got {len(value)} values")
        vals = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{op}: {name}={value!r} must be an int or a pair of ints (h, w)")
    for v in vals:
        if v < minimum:
            rule = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{op}: {name}={value!r} must be {rule}")
    return vals


def padding_pairs(op: str, padding, kernel: tuple[int, int], dilation: tuple[int, int],
                  stride: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Canonical ((top, bottom), (left, right)) padding."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' requires stride 1, got stride={stride}")
            return same_padding(kernel[0], dilation[0]), same_padding(kernel[1], dilation[1])
        raise ValueError(f"{op}: padding={padding!r} is not understood; acceptable words are "
                         "'valid' and 'same'")
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        return padding_per_axis(op, padding, ("height", "width"))
    ph, pw = pair(op, "padding", padding, minimum=0)
    return (ph, ph), (pw, pw)


def padding_per_axis(op: str, padding, axes) -> tuple[tuple[int, int], ...]:
    """``padding``, one (low, high) pair of non-negative ints per axis named in ``axes``,
    as a tuple of int pairs; ValueError naming the axis otherwise."""
    out = []
    for axis, p in zip(axes, padding, strict=True):
        if len(p) != 2 or not all(_is_int(v) for v in p):
            raise ValueError(f"{op}: padding={padding!r}: each axis needs a pair of ints "
                             f"(low, high), got {p!r} for {axis}")
        if p[0] < 0 or p[1] < 0:
            raise ValueError(f"{op}: padding={padding!r} must be non-negative")
        out.append((int(p[0]), int(p[1])))
    return tuple(out)


def check_channels(op: str, c_in: int, c_out: int, c_in_g: int, groups: int,
                   hint: str = "") -> None:
    """ValueError unless ``groups`` divides both channel counts and the weight's
    ``c_in_g`` input channels per group make up ``c_in``; ``hint`` ends the input's
    messages (a layout hint)."""
    if c_in % groups:
        raise ValueError(f"{op}: groups={groups} must divide C_in={c_in}{hint}")
    if c_out % groups:
        raise ValueError(f"{op}: groups={groups} must divide C_out={c_out}")
    if c_in_g * groups != c_in:
        raise ValueError(f"{op}: weight has {c_in_g} input channels per group but input has "
                         f"C_in={c_in} with groups={groups} (expected {c_in // groups})"
                         f"{hint}")


def check_kernel_fits(op: str, axes, sizes, kernel, dilation, padding,
                      hint: str = "") -> None:
    """ValueError when a dilated kernel is longer than the padded input along an axis
    (``axes`` names them; the other arguments have one entry per axis)."""
    for axis, size, k, r, p in zip(axes, sizes, kernel, dilation, padding, strict=True):
        eff = r * (k - 1) + 1
        if eff > size + p[0] + p[1]:
            raise ValueError(f"{op}: kernel {axis} {eff} (k={k}, dilation={r}) is larger than "
                             f"the padded input {axis} {size + p[0] + p[1]} "
                             f"(size {size} + padding {p[0]}+{p[1]}){hint}")


def check_groups(op: str, groups) -> int:
    if not _is_int(groups):
        raise TypeError(f"{op}: groups={groups!r} must be an int")
    if groups < 1:
        raise ValueError(f"{op}: groups={groups} must be positive")
    return int(groups)


def check_needs_input_grad(op: str, needs) -> tuple[bool, bool, bool]:
    """conv2d_backward's ``needs_input_grad``: three bools (grad_x, grad_w, grad_bias)."""
    try:
        flags = tuple(needs)
    except TypeError:
        flags = None
    if (flags is None or len(flags) != 3
            or not all(isinstance(f, (bool, np.bool_)) for f in flags)):
        raise TypeError(f"{op}: needs_input_grad={needs!r} must be three bools (grad_x, "
                        "grad_w, grad_bias)")
    return bool(flags[0]), bool(flags[1]), bool(flags[2])


def batched_grad_y(op: str, grad_y, args, producer: str):
    """``grad_y`` (an array) checked against the forward output's shape
    (``args.y_layout_shape``, without the batch axis when ``args.unbatched``) and returned
    batched; ValueError naming the expected shape and ``producer`` otherwise."""
    want = args.y_layout_shape[1:] if args.unbatched else args.y_layout_shape
    if grad_y.shape != want:
        raise ValueError(f"{op}: grad_y must have shape {want} (the {producer} output), got "
                         f"{grad_y.shape}")
    return grad_y[None] if args.unbatched else grad_y
