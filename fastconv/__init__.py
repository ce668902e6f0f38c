"""fastconv: a Numba-accelerated im2col convolution engine for NumPy arrays."""

from . import (
    _runtime,  # noqa: F401  (threading layer and cache dir, before any kernel)
    config,  # noqa: F401
)
from .autotune import Plan, choose_algorithm, plan  # noqa: F401
from .conv import (  # noqa: F401
    ALGORITHMS,
    conv2d,
    conv2d_backward,  # noqa: F401
)
from .norm import (
    batch_norm,  # noqa: F401
    batch_norm_backward,  # noqa: F401
)
from .pool import (
    avg_pool2d,  # noqa: F401
    avg_pool2d_backward,  # noqa: F401
    global_avg_pool2d,  # noqa: F401
    global_avg_pool2d_backward,  # noqa: F401
    max_pool2d,  # noqa: F401
    max_pool2d_backward,  # noqa: F401
)

__version__ = "0.1.0"
