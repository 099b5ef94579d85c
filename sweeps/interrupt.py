"""Stopping a whole study from inside its driver so that ``--resume`` continues it.

Why a signal and not a Tune ``Stopper`` returning ``stop_all() -> True``: Tune terminates the
trials a stopper stops and saves them as TERMINATED, which ``Tuner.restore`` never resumes; on
SIGINT it saves the experiment with its trials still running, which is exactly what
``--resume`` continues. Whoever interrupts says why in ``STUDY/interrupted.json``, so the
driver can exit with that reason (and its own exit code) once Tune has saved the state.
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import dataclass

from modaltune.atomic import write_json_atomic
from sweeps.layout import StudyLayout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interruption:
    by: str  # "storage" or "watchdog"
    message: str


def interrupt_study(layout: StudyLayout, by: str, message: str) -> None:
    """Record why, log it, and interrupt this driver as Ctrl-C would."""
    try:
        write_json_atomic(layout.interrupted, {"by": by, "message": message})
    except OSError as exc:  # a full disk may refuse even this; the log line still says why
        logger.error("could not record the interruption in %s: %s", layout.interrupted, exc)
    logger.error("interrupting the study: %s", message)
    signal.raise_signal(signal.SIGINT)  # Tune's own handler: save state, stop, resumable


def read_interruption(layout: StudyLayout) -> Interruption | None:
    if not layout.interrupted.exists():
        return None
    record = json.loads(layout.interrupted.read_text(encoding="utf-8"))
    return Interruption(by=record["by"], message=record["message"])


def clear_interruption(layout: StudyLayout) -> None:
    """A (re)started driver starts with no interruption on record."""
    layout.interrupted.unlink(missing_ok=True)
