"""Argument canonicalisation: every public op turns its arguments into one frozen record.

All validation and every error message live here (op, rule, values) and serve the CPU,
CUDA and Dask front ends alike: ``checks`` (arrays, dtypes, ints, flags, pairs, padding,
activation shapes, layouts, devices) and one module per op family's record (``conv``:
ConvArgs; ``conv_nd``: ConvNdArgs of conv1d and conv3d; ``pool``: PoolArgs and
PoolShapes; ``norm``: BatchNormArgs).
"""

from .checks import (  # noqa: F401
    DEVICES,
    DTYPES,
    HALF,
    LAYOUTS,
    activation_dims,
    as_ndarray,
    batched_grad_y,
    check_array,
    check_device,
    check_flag,
    check_groups,
    check_layout,
    check_needs_input_grad,
    check_same_dtype,
    layout_hint,
    looks_channels_last,
    narrow,
    padding_pairs,
    pair,
    plain_float,
    plane_axis,
    same_padding,
    warn_channels_last,
    widen,
)
from .conv import (  # noqa: F401
    ConvArgs,
    check_bias_shape,
    conv_args_from_shapes,
    conv_arrays,
    conv_output_size,
)
from .norm import (  # noqa: F401
    BatchNormArgs,
    batch_norm_args,
    batch_norm_backward_args,
    batch_norm_backward_inputs,
    batch_norm_backward_record,
    batch_norm_inputs,
    batch_norm_record,
)
from .pool import (  # noqa: F401
    PoolArgs,
    PoolShapes,
    avg_pool_args,
    check_grad_y,
    check_indices_range,
    check_input_shape,
    global_pool_args,
    max_unpool_args,
    max_unpool_inputs,
    pool_args,
    pool_output_size,
)
from .transpose import (  # noqa: F401
    TransposeArgs,
    transpose_args_from_shapes,
    transpose_arrays,
    transpose_grad_y,
    transpose_output_size,
)
