"""Stopping a whole study from inside its driver so that ``--resume`` continues it, and Ctrl-C.

Why a signal and not a Tune ``Stopper`` returning ``stop_all() -> True``: Tune terminates the
trials a stopper stops and saves them as TERMINATED, which ``Tuner.restore`` never resumes; on
SIGINT it saves the experiment with its trials still running, which is exactly what
``--resume`` continues. Whoever interrupts says why in ``STUDY/interrupted.json``, so the
driver can exit with that reason (and its own exit code) once Tune has saved the state.

Ctrl-C (``INTERRUPTS``): the first one stops the study with its state saved (during a Tune run
Tune's own handler takes it, then hands SIGINT back); every later one only says that the study
is stopping. A second Ctrl-C that raised in the middle of Tune's last save or of the driver's
own bookkeeping would tear what ``--resume`` needs and end in a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

from modaltune.atomic import write_json_atomic
from modaltune.sweeps.layout import StudyLayout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interruption:
    by: str  # "storage", "watchdog" or "lock"
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
    try:
        record = json.loads(layout.interrupted.read_text(encoding="utf-8"))
        return Interruption(by=record["by"], message=record["message"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        return Interruption(by="unknown", message=f"interrupted ({layout.interrupted} unreadable: {exc})")


def clear_interruption(layout: StudyLayout) -> None:
    """A (re)started driver starts with no interruption on record."""
    layout.interrupted.unlink(missing_ok=True)


class Interrupts:
    """The driver's SIGINT handler (``install`` it from the main thread of a command)."""

    def __init__(self) -> None:
        self.stopping = False  # a stop is under way: further Ctrl-C only say so
        self._installed = False
        self._tune_running = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True

    @contextlib.contextmanager
    def tune_run(self) -> Iterator[None]:
        """Around ``Tuner.fit``: a SIGINT that reaches this handler then is one after the one Tune
        took. Tune leaves its handler installed after a run that nobody interrupted, where it
        would swallow the next Ctrl-C: this one is put back."""
        self._tune_running = True
        try:
            yield
        finally:
            self._tune_running = False
            if self._installed:
                self.install()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping or self._tune_running:
            self.stopping = True
            logger.warning("stopping already: the study's state is being saved (Ctrl-\\ quits at once and loses what is not saved yet)")
            return
        self.stopping = True
        raise KeyboardInterrupt


INTERRUPTS = Interrupts()  # signals are the process's: one handler per driver process
