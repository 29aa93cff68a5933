"""``python -m nrgloops``: the same as the ``nrgloops`` command."""

from __future__ import annotations

import sys

from nrgloops.cli import main

sys.exit(main())
