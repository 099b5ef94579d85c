"""How a trial's Ray Train run and its Tune trial talk: reports one way, verdicts the other.

A trial's Ray Train controller produces the reports (every epoch, every finished repetition)
and the trial returns them to Tune one ``step`` at a time; Tune's scheduler answers each
repetition report by asking for the next step (go on) or by stopping the trial. The worker
group waits at the start of each repetition for that answer (``VerdictGate``), so a trial the
scheduler stops ends its run there, through Ray Train's ordinary teardown, instead of being
killed with a live worker group whose placement group would stay reserved.

One ``StudyChannel`` actor serves every trial of a study (keyed by trial id): it is created by
the driver and dies with it, and costs one process per study, not one per trial. It lives on
the driver's node (``open_channel``): on a cluster, a worker node lost mid-study (a spot
instance) takes its trials with it, which restart, but must not take every trial's channel.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from modaltune.train.run_gate import RunGate


@dataclass
class _TrialLine:
    reports: asyncio.Queue = field(default_factory=asyncio.Queue)
    released: int = -1  # Tune went on after the report of every repetition up to this index
    stopped: bool = False
    verdicts: dict[int, bool] = field(default_factory=dict)  # per run index: the answer every rank gets
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


@ray.remote(num_cpus=0)
class StudyChannel:
    """Async actor: per trial a FIFO of reports and the verdicts at repetition boundaries."""

    def __init__(self) -> None:
        self._lines: dict[str, _TrialLine] = {}

    async def open(self, trial_id: str, released: int) -> None:
        """A trial (re)starts; runs up to ``released + 1`` may start without waiting."""
        self._lines[trial_id] = _TrialLine(released=released)

    async def close(self, trial_id: str) -> None:
        self._lines.pop(trial_id, None)

    async def put(self, trial_id: str, report: dict[str, Any]) -> None:
        self._lines[trial_id].reports.put_nowait(report)

    async def take(self, trial_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The trial's next report, or None if none arrives within ``timeout_s``."""
        reports = self._lines[trial_id].reports
        if timeout_s <= 0:
            return None if reports.empty() else reports.get_nowait()
        try:
            return await asyncio.wait_for(reports.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    async def release(self, trial_id: str, index: int) -> None:
        """Tune asked for the next step after repetition ``index``'s report: go on."""
        await self._update(trial_id, released=index)

    async def stop(self, trial_id: str) -> None:
        """Tune stopped the trial: the run ends at its next repetition boundary."""
        if trial_id in self._lines:
            await self._update(trial_id, stopped=True)

    async def verdict(self, trial_id: str, index: int) -> bool:
        """Whether run ``index`` may start; waits for Tune's answer on run ``index - 1``.

        The first answer given for an index is the answer for every rank that asks later.
        """
        line = self._lines[trial_id]
        async with line.changed:
            await line.changed.wait_for(lambda: index in line.verdicts or line.stopped or index - 1 <= line.released)
            return line.verdicts.setdefault(index, not line.stopped)

    async def _update(self, trial_id: str, released: int | None = None, stopped: bool = False) -> None:
        line = self._lines[trial_id]
        async with line.changed:
            if released is not None:
                line.released = max(line.released, released)
            line.stopped = line.stopped or stopped
            line.changed.notify_all()


class VerdictGate(RunGate):
    """The worker side of the channel: every rank waits for the trial's verdict before a run."""

    def __init__(self, channel: Any, trial_id: str) -> None:
        self.channel = channel
        self.trial_id = trial_id

    def proceed(self, index: int) -> bool:
        return bool(ray.get(self.channel.verdict.remote(self.trial_id, index)))


def open_channel() -> Any:
    """The study's channel actor, on this (the driver's) node."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return StudyChannel.options(scheduling_strategy=here).remote()
