"""``python -m notecard``: the same as the ``notecard`` command."""

import sys

from notecard.cli import main

sys.exit(main())
