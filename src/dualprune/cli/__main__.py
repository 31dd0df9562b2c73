"""``python -m dualprune.cli``: the ``dualprune`` command."""

import sys

from dualprune.cli import main

sys.exit(main())
