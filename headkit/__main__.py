"""``python -m headkit``: the same as the ``headkit`` command."""

from .cli import main

if __name__ == "__main__":  # not when a worker process of the demo imports it
    raise SystemExit(main())
