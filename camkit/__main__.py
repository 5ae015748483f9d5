"""``python -m camkit``: the same as the ``camkit`` command."""

import sys

from camkit.cli import main

sys.exit(main())
