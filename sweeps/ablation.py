"""Run an ablation study: ``python sweeps/ablation.py --study sweeps/studies/demo.yaml [--storage DIR] [--resume]``.

On a cluster node (``ray submit cluster/gpu.yaml sweeps/ablation.py``) it joins the cluster
started there, with ``--address`` (or ``RAY_ADDRESS``) the one named, else it starts an embedded
Ray. Without ``--study`` it runs the study named by ``MODALTUNE_STUDY``, else the demo study.
``modaltune study`` is the same command, installed. Exit codes: 0 all trials finished, 1 some
trials failed or no model could be selected, 2 bad input (nothing started, nothing written) or
another driver holds the study, 3 storage unwritable or full (state kept; --resume), 4 stuck:
trials waited for resources nothing of the study held (state kept; --resume once freed),
130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts this folder first on sys.path, where module names such as
# ``plan`` or ``results`` could shadow others. In the repository its root goes there instead;
# a copy elsewhere (``ray submit`` runs ~/ablation.py) imports the installed project.
HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    if (HERE.parent / "cli" / "ablation.py").is_file():
        sys.path[0] = str(HERE.parent)
    else:
        del sys.path[0]

if __name__ == "__main__":
    from modaltune.cli.ablation import main

    sys.exit(main())
