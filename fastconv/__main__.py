"""``python -m fastconv ...``: the ``fastconv`` command line."""

import sys

from fastconv.tools.cli import main

sys.exit(main())
