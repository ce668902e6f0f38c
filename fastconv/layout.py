"""Layouts as data: where the batch, channel and spatial axes of an array lie.

A :class:`Layout` names the axes of activations (``"NHWC"``: batch, height, width,
channels) and of weights (``"HWIO"``: kernel height and width, input channels per group,
output channels) with one letter each. Every permutation between a layout and the
canonical one (``"NCHW"`` / ``"OIHW"``, the order the algorithms' records use) is
derived from those letters by :func:`permutation`; no other module writes one by hand.
The 1-D (``NCW``/``NWC``, weights ``OIW``/``WIO``) and 3-D (``NCDHW``/``NDHWC``, weights
``OIDHW``/``DHWIO``) layouts of conv1d and conv3d are records of the same kind, listed
by spatial rank in :data:`LAYOUTS_BY_RANK`; :data:`LAYOUTS` holds the 2-D ones.

Examples
--------
>>> from fastconv.layout import NHWC, permutation
>>> NHWC.to_canonical            # x.transpose(...) turns NHWC into NCHW
(0, 3, 1, 2)
>>> NHWC.shape(2, 3, 8, 8)       # (N, C, H, W) -> this layout's shape
(2, 8, 8, 3)
>>> permutation("HWIO", "OIHW")
(3, 2, 0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field


def permutation(src: str, dst: str) -> tuple[int, ...]:
    """The axes order that turns an array laid out as ``src`` into ``dst``:
    ``a.transpose(permutation(src, dst))`` (both strings hold the same letters)."""
    if sorted(src) != sorted(dst):
        raise ValueError(f"layouts {src!r} and {dst!r} do not name the same axes")
    return tuple(src.index(axis) for axis in dst)


@dataclass(frozen=True)
class Layout:
    """One layout family: the activation and weight orders and their canonical forms.

    ``name`` orders activations with N (batch), C (channels) and spatial letters;
    ``weight`` orders weights with O (output channels), I (input channels per group) and
    the same spatial letters. ``channels_last`` says whether C is the innermost axis
    (what kernels of their own for that layout exploit)."""

    name: str
    weight: str
    canonical: str
    canonical_weight: str
    # derived from the letters once, in __post_init__ (ops read them on every call)
    spatial: str = field(init=False, repr=False)
    channel_axis: int = field(init=False, repr=False)
    spatial_axes: tuple[int, ...] = field(init=False, repr=False)
    channels_last: bool = field(init=False, repr=False)
    is_canonical: bool = field(init=False, repr=False)
    to_canonical: tuple[int, ...] = field(init=False, repr=False)
    from_canonical: tuple[int, ...] = field(init=False, repr=False)
    weight_to_canonical: tuple[int, ...] = field(init=False, repr=False)
    weight_from_canonical: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self):
        spatial = self.canonical[2:]
        derived = {
            "spatial": spatial,                      # the spatial letters, e.g. "HW"
            "channel_axis": self.name.index("C"),
            "spatial_axes": tuple(self.name.index(s) for s in spatial),
            "channels_last": self.name[-1] == "C",   # C innermost
            "is_canonical": self.name == self.canonical,
            "to_canonical": permutation(self.name, self.canonical),
            "from_canonical": permutation(self.canonical, self.name),
            "weight_to_canonical": permutation(self.weight, self.canonical_weight),
            "weight_from_canonical": permutation(self.canonical_weight, self.weight),
        }
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    # shapes
    def shape(self, n: int, c: int, *spatial: int) -> tuple[int, ...]:
        """This layout's shape of an activation with canonical sizes ``(N, C, *spatial)``."""
        if self.is_canonical:
            return (n, c, *spatial)
        return _reorder((n, c, *spatial), self.from_canonical)

    def weight_shape(self, o: int, i: int, *kernel: int) -> tuple[int, ...]:
        """This layout's shape of a weight with canonical sizes ``(O, I, *kernel)``."""
        return _reorder((o, i, *kernel), self.weight_from_canonical)

    def canonical_shape(self, shape) -> tuple[int, ...]:
        """``(N, C, *spatial)`` of an activation shape in this layout."""
        return tuple(shape) if self.is_canonical else _reorder(tuple(shape), self.to_canonical)

    def canonical_weight_shape(self, shape) -> tuple[int, ...]:
        """``(O, I, *kernel)`` of a weight shape in this layout."""
        if self.is_canonical:
            return tuple(shape)
        return _reorder(tuple(shape), self.weight_to_canonical)

    # views
    def to_canonical_view(self, x):
        """``x`` (this layout) as a canonical (NCHW-ordered) view; no copy."""
        return x if self.is_canonical else x.transpose(self.to_canonical)

    def from_canonical_view(self, x):
        """A canonical array as a view in this layout; no copy."""
        return x if self.is_canonical else x.transpose(self.from_canonical)

    def weight_to_canonical_view(self, w):
        return w if self.is_canonical else w.transpose(self.weight_to_canonical)

    def weight_from_canonical_view(self, w):
        return w if self.is_canonical else w.transpose(self.weight_from_canonical)


def _reorder(values: tuple, perm: tuple[int, ...]) -> tuple:
    return tuple(map(values.__getitem__, perm))      # no generator: shapes ask every call


NCHW = Layout("NCHW", "OIHW", "NCHW", "OIHW")
NHWC = Layout("NHWC", "HWIO", "NCHW", "OIHW")

#: Every 2-D layout by name, in the order error messages list them.
LAYOUTS = {lay.name: lay for lay in (NCHW, NHWC)}

# 1-D (signals: W is the one spatial axis) and 3-D (volumes: D, H, W) layouts
NCW = Layout("NCW", "OIW", "NCW", "OIW")
NWC = Layout("NWC", "WIO", "NCW", "OIW")
NCDHW = Layout("NCDHW", "OIDHW", "NCDHW", "OIDHW")
NDHWC = Layout("NDHWC", "DHWIO", "NCDHW", "OIDHW")

#: The layouts of each spatial rank (1: conv1d, 2: conv2d and the rest, 3: conv3d).
LAYOUTS_BY_RANK = {
    1: {lay.name: lay for lay in (NCW, NWC)},
    2: LAYOUTS,
    3: {lay.name: lay for lay in (NCDHW, NDHWC)},
}


def get(op: str, name, rank: int = 2) -> Layout:
    """The layout called ``name`` among those of spatial ``rank``; ValueError naming the op
    and the accepted layouts.

    >>> get("conv3d", "NDHWC", rank=3).weight
    'DHWIO'
    >>> get("conv2d", "NCW")
    Traceback (most recent call last):
    ...
    ValueError: conv2d: layout='NCW' is not supported; acceptable layouts are 'NCHW', 'NHWC'
    """
    table = LAYOUTS_BY_RANK[rank]
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"{op}: layout={name!r} is not supported; acceptable layouts are "
                         f"{', '.join(repr(x) for x in table)}") from None
