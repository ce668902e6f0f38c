"""fastconv: a Numba-accelerated im2col convolution engine for NumPy arrays."""

from . import _runtime  # noqa: F401  (threading layer and cache dir, before any kernel)
from . import config  # noqa: F401
from .conv import ALGORITHMS, conv2d  # noqa: F401
from .conv import conv2d_backward  # noqa: F401
from .norm import batch_norm  # noqa: F401
from .norm import batch_norm_backward  # noqa: F401
from .pool import avg_pool2d  # noqa: F401
from .pool import avg_pool2d_backward  # noqa: F401
from .pool import global_avg_pool2d  # noqa: F401
from .pool import global_avg_pool2d_backward  # noqa: F401
from .pool import max_pool2d  # noqa: F401
from .pool import max_pool2d_backward  # noqa: F401

__version__ = "0.1.0"
