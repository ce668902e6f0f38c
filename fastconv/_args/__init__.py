"""Argument canonicalisation: every public op turns its arguments into one frozen record.

All validation and every error message live here (op, rule, values) and serve the CPU,
CUDA and Dask front ends alike: ``checks`` (arrays, dtypes, ints, pairs, padding,
layouts, devices) and one module per op family's record (``conv``: ConvArgs).
"""

from .checks import (  # noqa: F401
    DEVICES,
    DTYPES,
    LAYOUTS,
    check_array,
    check_device,
    check_groups,
    check_layout,
    check_same_dtype,
    padding_pairs,
    pair,
    same_padding,
)
from .conv import ConvArgs, conv_args_from_shapes, conv_arrays, conv_output_size  # noqa: F401
