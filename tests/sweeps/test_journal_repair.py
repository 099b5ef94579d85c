"""An Optuna journal whose last append a full disk cut short is repaired when the study reopens it (sweeps/searcher.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from modaltune.sweeps.searcher import CellStudy
from modaltune.sweeps.spec import Distribution, SearchSpec

SEARCH = SearchSpec(trials_per_cell=3, params={"optim.lr": Distribution(type="loguniform", low=1e-3, high=1e-2)})


def test_a_journal_cut_short_by_a_full_disk_keeps_working(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    CellStudy("c000: all", {}, SEARCH, repetitions=1, journal=journal).ask("first")
    with open(journal, "ab") as handle:  # the next append, cut short by a full disk
        handle.write(b'{"op_code": 6, "worker_id": "w", "trial_id": 0, "interm')
    CellStudy("c000: all", {}, SEARCH, repetitions=1, journal=journal).ask("second")  # a resumed driver appends after it
    study = optuna.load_study(study_name="c000: all", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.trials) == 2  # Optuna's own reader reads every record
    assert list(tmp_path.glob("optuna.journal.torn-*"))  # the torn bytes are kept beside it
