"""The main job, as a script: the same as ``headkit demo``.

Pretrains a small encoder with SimCLR three times on real digits (no head, MLPHead,
ReweightHead), sweeps the layers of each, prints one table per run, names the best layer and
writes ``headkit-demo.png``.

    python examples/quickstart.py [--data-root PATH] [--epochs 40] [--smoke]
"""

from __future__ import annotations

import sys

from headkit._cli import main

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))
