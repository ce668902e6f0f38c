"""The convolution algorithms, one registry entry each (``fastconv.algos.registry``).

Importing this package registers every algorithm; ``ALGORITHMS`` lists their names in
registration order. Each entry's forward takes ``(x, w, args, out, bias=None)``: x, w and
the preallocated out in the caller's layout, bias added when given.
"""

from . import naive  # noqa: F401, I001  (registration order: the order of ALGORITHMS)
from . import im2col  # noqa: F401
from . import fft  # noqa: F401
from . import winograd  # noqa: F401
from .registry import ALGORITHMS  # noqa: F401
