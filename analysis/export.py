"""``modaltune select``: the selected configuration exported to ``STUDY/best/`` for ``modaltune predict``.

The export holds one member per repetition (fold x seed) of the selected trial, each from its
final epoch's adapter-only checkpoint (the layout is ``modaltune.predict``'s), the metrics it
was selected on (``selection.json``) and a model card. It is written to a temporary folder and
renamed into place, so an interrupted export never leaves half a model behind.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from modaltune import predict
from modaltune.analysis.predictions import prediction_file, trial_predictions
from modaltune.analysis.selection import OPTIMISM_NOTE, Selection, final_checkpoint, held_out_metrics, select_model
from modaltune.analysis.summary import final_epochs, load_study
from modaltune.atomic import write_json_atomic, write_text_atomic
from modaltune.data import Cohort
from modaltune.data.modalities import COHORT_MODALITIES
from modaltune.errors import InputError
from modaltune.models import IMAGE
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.spec import StudySpec
from modaltune.train.batches import fit_normalizers, normalizer_file
from modaltune.train.config import TrainConfig


def export_selection(study_dir: str | Path, spec: StudySpec, selection: Selection, test_metrics: pd.DataFrame | None = None) -> Path:
    """Write ``STUDY/best/`` for the selected trial; returns its path."""
    layout = StudyLayout(study_dir)
    cohort = Cohort(spec.cohort)
    staging = Path(tempfile.mkdtemp(prefix=".best-", dir=layout.root))
    try:
        members = []
        for seed in spec.seeds:
            for fold in spec.fold_indices:
                name = f"fold{fold}_seed{seed}"
                _export_member(layout, selection.trial_id, fold, seed, cohort, staging / predict.MEMBERS_DIR / name)
                members.append(name)
        config = TrainConfig.model_validate(json.loads((staging / predict.MEMBERS_DIR / members[0] / predict.CONFIG).read_text())["train"])
        meta = {
            "format": predict.FORMAT,
            "study": spec.name,
            "trial_id": selection.trial_id,
            "objective": config.objective,
            "feature_dim": cohort.manifest.feature_dim,
            "modalities": {name: COHORT_MODALITIES[name].signature(cohort) for name in config.model.modalities if name != IMAGE},
            "classes": {name: cohort.labels.subtypes_of(name) for name in cohort.cohort_names},
            "members": members,
        }
        write_json_atomic(staging / predict.MODEL_FILE, meta)
        record = _selection_record(spec, selection, test_metrics)
        write_json_atomic(staging / "selection.json", record)
        write_text_atomic(staging / "MODEL_CARD.md", _model_card(spec, config, record, meta))
        destination = layout.best
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
        return destination
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_member(layout: StudyLayout, trial_id: str, fold: int, seed: int, cohort: Cohort, out: Path) -> None:
    checkpoint = final_checkpoint(layout.runs / trial_id, fold, seed)
    loop_config = json.loads((checkpoint / "train_config.json").read_text(encoding="utf-8"))
    config = TrainConfig.model_validate(loop_config["train"])
    epoch = json.loads((checkpoint / "train_state.json").read_text(encoding="utf-8"))["epoch"]
    train_cases = prediction_file(layout.predictions / trial_id / f"fold{fold}_seed{seed}", epoch, "train")
    if not train_cases.exists():
        raise FileNotFoundError(f"{train_cases}: the run saved no training-set predictions; it cannot be exported")
    out.mkdir(parents=True)
    shutil.copy2(checkpoint / predict.ADAPTER, out / predict.ADAPTER)
    shutil.copy2(loop_config["paths"]["label_bank"], out / predict.LABEL_BANK)
    shutil.copy2(train_cases, out / predict.TRAIN_CASES)
    write_json_atomic(out / predict.CONFIG, {"train": loop_config["train"]})
    train_ids, _ = cohort.split(config.fold, config.cohorts, config.test_fold)
    for name, normalizer in fit_normalizers(cohort, config.model.modalities, train_ids).items():  # as the training worker fitted them
        normalizer.save(out / normalizer_file(name))


def _selection_record(spec: StudySpec, selection: Selection, test_metrics: pd.DataFrame | None) -> dict:
    row = selection.row
    record = {
        "trial_id": selection.trial_id,
        "cell": row["cell"],
        "levels": {f: str(row[f]) for f in spec.factors},
        "params": {p: _plain(row[p]) for p in spec.search.params if p in row.index},
        "metric": selection.metric,
        "direction": selection.direction,
        "rule": "one standard error, fewest trainable parameters",
        "mean": float(row["mean"]), "se": _plain(row["se"]), "repetitions": int(row["n"]),
        "trainable_params": int(row["trainable_params"]),
        "best_trial_id": selection.best_trial_id, "bar": selection.bar,
        "candidates": len(selection.candidates),
        "optimism": OPTIMISM_NOTE,
    }
    if test_metrics is not None and len(test_metrics):
        record["test_fold"] = spec.test_fold
        record["test"] = {c: _plain(test_metrics[c].mean()) for c in test_metrics.columns if c not in ("fold", "seed")}
    return record


def _plain(value: object) -> object:
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    return value.item() if isinstance(value, np.generic) else value


def _model_card(spec: StudySpec, config: TrainConfig, record: dict, meta: dict) -> str:
    test = record.get("test")
    checkpoint = config.model.encoder_checkpoint or f"random init, seed {config.model.encoder_init_seed}"
    lines = [
        f"# Model card: {spec.name} / trial {record['trial_id']}",
        "",
        "ModalTune: a frozen slide-level foundation model with trainable Modal Adapters that inject other modalities,",
        "and labels encoded as text. Exported by `modaltune select`; use it with `modaltune predict`.",
        "",
        "## What it is",
        f"- Slide encoder: `{config.model.encoder}` (frozen; checkpoint `{checkpoint}`)",
        f"- Modalities: {', '.join(config.model.modalities)}; objective `{config.objective}`; text encoder `{config.text_encoder}`",
        f"- Levels: {', '.join(f'{k} = {v}' for k, v in record['levels'].items()) or 'none'}; tuned: {record['params'] or 'none'}",
        f"- {record['trainable_params']:,} trainable parameters per member; {len(meta['members'])} members (one per fold x seed), averaged",
        f"- Cancer types and subtypes: {meta['classes']}",
        "",
        "## How it was chosen",
        f"- Best mean validation {record['metric']} over {record['repetitions']} repetitions among {record['candidates']} finished trials,",
        f"  then the one-standard-error rule towards fewer trainable parameters: {record['metric']} = {record['mean']:.4f}"
        + (f" ± {record['se']:.4f} (SE)" if record['se'] is not None else ""),
        f"- {OPTIMISM_NOTE}",
        "",
        "## Held-out test",
        (f"- Test fold {record['test_fold']}: " + ", ".join(f"{k} = {v:.3f}" for k, v in test.items() if v is not None and "/" not in k))
        if test
        else "- No held-out test fold was configured: there is no unbiased estimate of this model's performance.",
        "",
        "## Intended use and limits",
        "- Research use on cohorts prepared like the training cohort (same tile feature extractor, width and gene groups).",
        "- Risk is relative: the members' mean percentile among their training cases' risks (0.5 = the training median),",
        "  higher = shorter survival; `risk_group` is high exactly when it is above 0.5.",
        "- `train_cases.parquet` in each member holds the training cases' labels and embeddings (the distill objective's",
        "  probes are refitted on them): treat the export as containing patient-level data.",
        "",
    ]
    return "\n".join(lines)


def select_and_export(study_dir: str | Path, metric: str | None = None) -> tuple[Selection, Path]:
    """Select the study's model and export it to ``STUDY/best/`` (``modaltune select``)."""
    study_dir = Path(study_dir)
    if not StudyLayout(study_dir).spec.exists():
        raise InputError(f"{study_dir}: not a study folder (no study.yaml)")
    spec, results, trials = load_study(study_dir)
    if results.empty:
        raise InputError(f"{study_dir}: the study has no results yet")
    selection = select_model(study_dir, spec, results, trials, metric)
    finals = final_epochs(results)
    repetitions = trial_predictions(study_dir, selection.trial_id, finals[finals["trial_id"] == selection.trial_id])
    return selection, export_selection(study_dir, spec, selection, held_out_metrics(spec, repetitions))
