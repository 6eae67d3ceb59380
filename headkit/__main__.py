"""``python -m headkit``: the same as the ``headkit`` command."""

from ._cli import main

raise SystemExit(main())
