"""fastconv: a Numba-accelerated im2col convolution engine for NumPy arrays."""

from . import _runtime  # noqa: F401, I001  (threading layer and cache dir, before any kernel)
from . import config  # noqa: F401
from .conv import ALGORITHMS, conv2d  # noqa: F401
from .conv import conv2d_backward  # noqa: F401
from .conv_nd import conv1d, conv1d_backward, conv1d_plan  # noqa: F401
from .conv_nd import conv3d, conv3d_backward, conv3d_plan  # noqa: F401
from .conv_transpose import conv_transpose2d, conv_transpose2d_backward  # noqa: F401
from .conv_transpose import plan_conv_transpose2d  # noqa: F401
from .autotune import Plan, choose_algorithm, plan  # noqa: F401
from .norm import batch_norm  # noqa: F401
from .norm import batch_norm_backward  # noqa: F401
from .pool import avg_pool2d  # noqa: F401
from .pool import avg_pool2d_backward  # noqa: F401
from .pool import global_avg_pool2d  # noqa: F401
from .pool import global_avg_pool2d_backward  # noqa: F401
from .pool import max_pool2d  # noqa: F401
from .pool import max_pool2d_backward  # noqa: F401
from .padding import pad, pad_backward  # noqa: F401
from .fold import fold, unfold  # noqa: F401
from .autograd import Tensor, gradcheck, manual_seed, no_grad  # noqa: F401
from . import nn  # noqa: F401
from . import optim  # noqa: F401
from . import data  # noqa: F401
from . import models  # noqa: F401
from . import checkpoint  # noqa: F401
from . import cifar  # noqa: F401

__version__ = "0.1.0"
