"""``python -m runtime_guard`` is the ``runtime-guard`` command."""

import sys

from runtime_guard.cli import main

sys.exit(main())
