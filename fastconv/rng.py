"""fastconv's default random generator.

Weight initialisation (``fastconv.nn.init`` and the layers), dropout and the shuffling
of ``fastconv.data.DataLoader`` draw from it whenever no ``rng`` (or ``seed``) argument
is given. :func:`manual_seed` replaces it with a freshly seeded one, so that a seeded run
repeats bit for bit.
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed fastconv's default generator (weight initialisation, dropout, shuffling).

    Returns the new ``numpy.random.Generator`` (``numpy.random.default_rng(seed)``).
    """
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator() -> np.random.Generator:
    """The generator used where no ``rng`` argument is given (see :func:`manual_seed`)."""
    return _generator
