"""The nested searcher: equal budgets per cell, pruned trials reach Optuna as pruned, state survives a save."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher

from modaltune.sweeps.searcher import CellSearcher
from modaltune.sweeps.spec import SearchSpec
from modaltune.sweeps.trial_rows import DONE_KEY, KIND_KEY

SEARCH = SearchSpec.model_validate(
    {"trials_per_cell": 3, "seed": 5, "params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}
)
CELLS = {"c000": {"modalities": "wsi"}, "c001": {"modalities": "wsi+rna"}}


def _repetition(done: int, value: float) -> dict:
    return {KIND_KEY: "repetition", DONE_KEY: done, "cv_c_index": value}


def test_round_robin_equal_budget_then_finished(tmp_path: Path) -> None:
    searcher = CellSearcher(CELLS, SEARCH, repetitions=2, journal=tmp_path / "optuna.journal")
    suggestions = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [s["cell"] for s in suggestions] == ["c000", "c001"] * 3
    assert all(s["modalities"] == CELLS[s["cell"]]["modalities"] and 1e-4 <= s["optim.lr"] <= 1e-2 for s in suggestions)
    # Same sampler seed in every cell: paired first proposals.
    assert suggestions[0]["optim.lr"] == suggestions[1]["optim.lr"]
    assert searcher.suggest("t6") == Searcher.FINISHED


def test_stopped_trials_are_pruned_with_their_fold_values(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    searcher = CellSearcher(CELLS, SEARCH, repetitions=2, journal=journal)
    for i in range(3):
        searcher.suggest(f"t{i}")  # t0 -> c000, t1 -> c001, t2 -> c000
    # t0 finishes both repetitions; t2 is stopped after the first; t1 errors.
    searcher.on_trial_result("t0", {KIND_KEY: "epoch", DONE_KEY: 0, "cv_c_index": 0.5})  # epochs are not intermediate values
    searcher.on_trial_result("t0", _repetition(1, 0.62))
    searcher.on_trial_result("t0", _repetition(2, 0.64))
    searcher.on_trial_complete("t0", _repetition(2, 0.64))
    searcher.on_trial_complete("t2", _repetition(1, 0.55))  # a scheduler STOP skips on_trial_result
    searcher.on_trial_complete("t1", None, error=True)

    studies = searcher.studies()
    done = {t.number: t for t in studies["c000"].trials}
    assert done[0].state == TrialState.COMPLETE and done[0].value == 0.64
    assert done[0].intermediate_values == {1: 0.62, 2: 0.64}
    assert done[1].state == TrialState.PRUNED and done[1].intermediate_values == {1: 0.55}
    assert studies["c001"].trials[0].state == TrialState.FAIL

    # Optuna's own API opens the journal: one study per cell, named after it.
    storage = JournalStorage(JournalFileBackend(str(journal)))
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["c000: modalities=wsi", "c001: modalities=wsi+rna"]
    assert optuna.load_study(study_name=names[0], storage=storage).best_value == 0.64

    # The state survives a save and restore (the Tuner.restore path); a trial asked after the
    # save (lost with the driver) is failed, not left running forever.
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.suggest("lost")
    fresh = CellSearcher(CELLS, SEARCH, repetitions=2, journal=journal)
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert [t.state for t in fresh.studies()["c000"].trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert [t.state for t in fresh.studies()["c001"].trials] == [TrialState.FAIL, TrialState.FAIL]
    assert [fresh.suggest(f"t{i}")["cell"] for i in range(3, 6)] == ["c001", "c000", "c001"]
    assert fresh.suggest("t6") == Searcher.FINISHED
    fresh.on_trial_complete("t2", _repetition(1, 0.55))  # told before the restart: nothing changes
    assert len(fresh.studies()["c000"].trials) == 3


def test_multi_objective_cells_use_nsga2(tmp_path: Path) -> None:
    search = SearchSpec.model_validate(
        {
            "trials_per_cell": 2, "sampler": "nsga2",
            "metrics": [{"name": "c_index"}, {"name": "balanced_accuracy"}],
            "params": {"optim.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}},
        }
    )
    searcher = CellSearcher({"c000": {}}, search, repetitions=1, journal=tmp_path / "optuna.journal")
    searcher.suggest("a")
    searcher.on_trial_complete("a", {KIND_KEY: "repetition", DONE_KEY: 1, "cv_c_index": 0.6, "cv_balanced_accuracy": 0.8})
    trial = searcher.studies()["c000"].trials[0]
    assert trial.state == TrialState.COMPLETE and trial.values == [0.6, 0.8]
