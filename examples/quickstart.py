"""The main job, as a script: the same as ``headkit demo``.

Does the layer before the projection head keep what augmentation removes? Pairs of
scikit-learn digits; SimCLR's views remove the right digit half of the time; the task is to name
it. Pretrains a small encoder with no head, MLPHead and ReweightHead over 3 seeds, sweeps every
layer, and prints the pre- minus post-projection gap per head with its interval, the layers tied
with the best, the label-free choice beside the oracle, and ``headkit-demo.png``.

    python examples/quickstart.py [--seeds 3] [--epochs 15] [--out DIR] [--smoke]

Full run: 139 s on a 2-core CPU shared with other jobs (load average 10), in two worker
processes of one thread each.
"""

from __future__ import annotations

import sys

from headkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))
