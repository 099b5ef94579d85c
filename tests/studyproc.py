"""Running ``sweeps/ablation.py`` as a real process from tests.

Each study runs in its own process group (its own embedded Ray); a test ends that group, and
only it, when a study overruns or must die.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ABLATION = REPO / "sweeps" / "ablation.py"


def write_spec(path: Path, base: str, edits: dict[str, Any]) -> Path:
    """A shipped spec (``sweeps/studies/<base>.yaml``) with top-level keys replaced."""
    raw = yaml.safe_load((REPO / "sweeps" / "studies" / f"{base}.yaml").read_text(encoding="utf-8"))
    raw |= {"name": path.stem} | edits
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def start_study(spec: Path, storage: Path, *extra: str, command: str = "script") -> subprocess.Popen:
    """``python sweeps/ablation.py`` (``command="script"``) or its command form ``modaltune study`` (``"cli"``)."""
    program = [sys.executable, str(ABLATION)] if command == "script" else [str(Path(sys.executable).with_name("modaltune")), "study"]
    return subprocess.Popen(
        [*program, "--study", str(spec), "--storage", str(storage), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def finish_study(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for the study; on overrun kill its process group and fail with its output."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        output, _ = process.communicate()
        pytest.fail(f"study did not finish in {timeout} s:\n{output[-4000:]}")
    kill_group(process)  # whatever the driver left behind (e.g. after it was SIGKILLed)
    return process.returncode, output


# A line Ray forwards from Ray Train's own controller actor. Under load (two studies on two
# cores) it logs its internal poll timeouts (placement-group wait, preemption watcher) as
# warnings with a traceback and carries on; none of this project's code runs in that actor.
_TRAIN_CONTROLLER_LINE = re.compile(r"^(\x1b\[\d+m)?\(TrainController pid=\d+")


def without_train_controller_lines(output: str) -> str:
    """A study's output without what Ray Train's controller actor logged, to check that the
    driver and the trials printed no traceback."""
    return "\n".join(line for line in output.splitlines() if not _TRAIN_CONTROLLER_LINE.match(line))


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def markers(study: Path) -> dict[str, int]:
    """Every finished repetition's marker and its modification time."""
    return {str(p.relative_to(study)): p.stat().st_mtime_ns for p in (study / "trials").glob("*/*/finished.json")}
