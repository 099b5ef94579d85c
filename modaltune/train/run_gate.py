"""A point where a worker group that trains several runs in turn asks whether to go on.

A sweep trial trains all its repetitions in one Ray Train worker group (one launch per trial),
and its scheduler decides after each repetition whether the configuration is worth the next
one. If the trial were simply killed on a "stop", its live worker group would die with it and
leave its placement group reserved (it belongs to the job, not to the run). Instead every rank
asks the gate before each run; the gate answers once the decision is known, the same answer
on every rank, and on "stop" the training function returns: Ray Train ends the run as after
any finished run and removes its placement group itself.
"""

from __future__ import annotations

import abc


class RunGate(abc.ABC):
    """Asked by every rank before it starts run ``index`` of its worker group (a single run
    has no gate). Pickled into the training function's config, so it must be picklable."""

    @abc.abstractmethod
    def proceed(self, index: int) -> bool:
        """True to train run ``index``, False to end the worker group here. May block until the
        answer is known; must give every rank the same answer for the same ``index`` (ranks
        that disagree would wait for each other's collectives forever)."""
