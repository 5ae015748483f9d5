"""``python -m benchmarks`` (from the repository root) or ``nox -s bench``."""

from __future__ import annotations

import sys

from benchmarks import main

sys.exit(main())
