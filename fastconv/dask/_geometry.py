"""Which input rows each output block of a sliding-window op reads (pure index arithmetic).

One spatial axis of conv2d or pooling is described by an :class:`Axis`: input length n,
kernel k, stride s, dilation r, padding (p_lo, p_hi) and the rounding of the output size.
Output row i reads the input rows ``i*s - p_lo + r*q`` for q = 0..k-1; rows outside
[0, n) are padding.

To compute output rows [i0, i1) without the rest of the image, a block takes the input
rows [a, b) and runs the *unchanged* in-memory op (same padding, same everything) on that
slice, then keeps the local output rows [j0, j0 + i1 - i0). This is exact when

* a is a multiple of s, so local output row j0 = i0 - a/s starts its window at the
  same input row as global row i0;
* a <= max(0, i0*s - p_lo): every real row the kept windows read is in the slice, and
  the slice's own top padding is read only by local rows before j0 (dropped) -- unless
  a = 0, where it *is* the image's top padding;
* b = min(n, (i1-1)*s - p_lo + r*(k-1) + 1), or b = n when the last kept window reaches
  the bottom padding: then the slice's bottom padding is the image's.

(Kept windows that lie wholly in the padding, possible when the padding is wider than
the kernel, get a slice of one row that none of them reads.)

Because the in-memory op sees the same padding and the same numbers at the same window
positions, max pooling, average pooling (whatever ``count_include_pad`` and
``ceil_mode`` say about divisors) and convolution all agree with the whole-image result.
The cost is at most ceil(p_lo/s) extra output rows on each side of an inner block.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from dataclasses import dataclass

from .._args import conv_output_size, pool_output_size


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a sliding-window op (``ceil_mode`` only with symmetric
    padding, as pooling has)."""

    n: int
    k: int
    s: int
    r: int
    pad: tuple[int, int]
    ceil_mode: bool = False

    @property
    def out(self) -> int:
        if self.ceil_mode:
            return pool_output_size(self.n, self.k, self.s, self.pad[0], self.r, True)
        return conv_output_size(self.n, self.k, self.s, *self.pad, self.r)

    def output_chunks(self, in_chunks: tuple[int, ...]) -> tuple[int, ...]:
        """Output block sizes following the input chunks.

        An input chunk boundary B becomes the output boundary ceil((B + p_lo) / s): the
        first output row whose window starts at or after B. Empty blocks are dropped.
        """
        out = self.out
        cuts, start = {0, out}, 0
        for size in in_chunks[:-1]:
            start += size
            cuts.add(min(out, max(0, -(-(start + self.pad[0]) // self.s))))
        cuts = sorted(cuts)
        return tuple(b - a for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a) or (out,)

    def span(self, i0: int, i1: int) -> tuple[int, int, int]:
        """(a, b, j0): input rows [a, b) and the first local output row kept, for output
        rows [i0, i1) (0 <= i0 < i1 <= out)."""
        lo = i0 * self.s - self.pad[0]
        hi = (i1 - 1) * self.s - self.pad[0] + self.r * (self.k - 1) + 1
        # Windows lying wholly in the padding (lo >= n, or hi <= 0) still need a slice
        # of at least one row to run on; that row is read by no kept window.
        top = min(lo, self.n - 1)
        a = 0 if top <= 0 else top - top % self.s
        b = max(min(self.n, hi), a + 1)
        return a, b, i0 - a // self.s


@functools.lru_cache(maxsize=16)
def _starts(chunks: tuple[int, ...]) -> list[int]:
    return list(itertools.accumulate(chunks, initial=0))


def chunk_pieces(chunks: tuple[int, ...], a: int, b: int) -> list[tuple[int, int, int]]:
    """The chunks that rows [a, b) touch, as (chunk index, local start, local stop)."""
    starts = _starts(tuple(chunks))
    first = bisect.bisect_right(starts, a) - 1      # the chunk holding row a
    pieces = []
    for idx in range(first, len(chunks)):
        if starts[idx] >= b:
            break
        pieces.append((idx, max(a, starts[idx]) - starts[idx], min(b, starts[idx + 1])
                       - starts[idx]))
    return pieces
