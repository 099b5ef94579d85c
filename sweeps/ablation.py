"""Run an ablation study: ``python sweeps/ablation.py --study sweeps/studies/demo.yaml [--storage DIR] [--resume]``.

Locally this starts an embedded Ray; with ``--address auto`` (or ``RAY_ADDRESS``) it joins a
running cluster. Without ``--study`` it runs the study named by ``MODALTUNE_STUDY``, else the
demo study. Exit codes: 0 all trials finished, 1 some trials failed, 2 bad input (nothing
started, nothing written), 3 storage unwritable or full (state kept; --resume), 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts this folder first on sys.path, where module names such as
# ``plan`` or ``results`` could shadow others; the repository root is what we want there.
REPO_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO_ROOT)

from sweeps.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
