"""``modaltune predict``: risk and subtype for new slides from an exported model (``STUDY/best/``).

An exported model is the selected configuration's fold models (one per repetition), each an
adapter-only checkpoint on top of the same frozen slide encoder, plus what it needs to read a
new cohort exactly as it was trained: its label bank, the training split's RNA normalisation
and, for the ``distill`` objective, the training cases' embeddings its probes are refitted on.
Predictions are the members' mean. Fold models' risks are on different scales, so each
member's risk is first turned into its percentile among that member's training cases of the
same cancer type (bounded, so a member whose training risks barely vary cannot outweigh the
others, as a z-score by their SD could); ``risk`` is the members' mean percentile and a case is
``high`` risk exactly when it is above 0.5, i.e. above the training median on average: one
rule, so ``risk`` and ``risk_group`` never contradict each other. Class probabilities are
averaged.

Layout of an exported model folder::

    model.json                    format, feature width, gene groups, classes per cancer type, members
    models/<member>/adapter.pt    trained weights (adapters, modality encoders, heads)
    models/<member>/train_config.json, label_bank.npz, train_cases.parquet, <modality>_normalizer.npz (RNA)
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from modaltune.atomic import write_parquet_atomic, write_text_atomic
from modaltune.data import Cohort, CohortInvalidError, validate_cohort
from modaltune.data.modalities import COHORT_MODALITIES, normalised_modalities
from modaltune.errors import InputError
from modaltune.text import LabelBank
from modaltune.train.batches import CaseBatcher, ModalityNormalizer, normalizer_file, seeded_batches
from modaltune.train.config import TrainConfig
from modaltune.train.loop import build_train_module, collect_case_outputs, predict_cases

logger = logging.getLogger(__name__)

FORMAT = 2  # 2: "modalities" (name -> what a cohort must match) replaced "gene_groups"
MODEL_FILE = "model.json"
MEMBERS_DIR = "models"
ADAPTER = "adapter.pt"
CONFIG = "train_config.json"
LABEL_BANK = "label_bank.npz"
TRAIN_CASES = "train_cases.parquet"


@dataclass(frozen=True)
class ExportedModel:
    """``model.json`` of an exported model folder."""

    root: Path
    feature_dim: int
    modalities: dict[str, Any]  # name -> the signature a cohort must reproduce (RNA: its gene groups)
    classes: dict[str, list[str]]
    members: list[str]

    @classmethod
    def open(cls, root: str | Path) -> ExportedModel:
        root = Path(root)
        path = root / MODEL_FILE
        if not path.is_file():
            raise InputError(f"{path}: not found (is {root} a model exported by `modaltune select`?)")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise InputError(f"{path}: format {meta.get('format')!r}, this version reads format {FORMAT}")
        for member in meta["members"]:
            for name in (ADAPTER, CONFIG, LABEL_BANK, TRAIN_CASES):
                if not (root / MEMBERS_DIR / member / name).is_file():
                    raise InputError(f"{root / MEMBERS_DIR / member / name}: missing from the exported model")
        return cls(root, int(meta["feature_dim"]), meta["modalities"], meta["classes"], list(meta["members"]))

    def member_dir(self, member: str) -> Path:
        return self.root / MEMBERS_DIR / member


def check_cohort(model: ExportedModel, cohort: Cohort) -> list[str]:
    """Everything about a new cohort the model depends on, before any slide is read. Returns
    the cancer types the model can score; the others are logged as skipped (none: an error)."""
    where = cohort.layout.root
    if cohort.manifest.feature_dim != model.feature_dim:
        raise InputError(f"{where}: tile features are {cohort.manifest.feature_dim}-d, the model was trained on {model.feature_dim}-d")
    for name, signature in model.modalities.items():
        modality = COHORT_MODALITIES[name]
        if not modality.present(cohort.layout):
            raise InputError(f"{where}: the model uses {name} but {modality.source(cohort.layout)} does not exist")
        problem = modality.signature_problem(cohort, signature)
        if problem:
            raise InputError(problem)
    known = [name for name in cohort.cohort_names if name in model.classes]
    unknown = sorted(set(cohort.cohort_names) - set(known))
    if not known:
        raise InputError(f"{where}: cancer type(s) {unknown} were not trained on (the model knows {sorted(model.classes)})")
    if unknown:
        skipped = len(cohort.cases(cohorts=unknown))
        logger.warning("skipping %d case(s) of cancer type(s) %s: the model was not trained on them", skipped, unknown)
    for name in known:
        if cohort.labels.subtypes_of(name) != model.classes[name]:
            raise InputError(
                f"{cohort.layout.labels}: subtypes of {name} are {cohort.labels.subtypes_of(name)}, the model's are {model.classes[name]}"
            )
    return known


def predict_cohort(
    model_dir: str | Path, cohort_dir: str | Path, case_ids: list[str] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> pd.DataFrame:
    """One row per case: ``risk`` (the members' mean training percentile), ``risk_sd``, ``risk_group``,
    ``predicted_subtype``, ``class_probabilities`` and ``models``."""
    model = ExportedModel.open(model_dir)
    report = validate_cohort(cohort_dir, check_folds=False)  # scored, not split: its folds need not be scorable
    if not report.ok:
        raise CohortInvalidError(report)
    cohort = Cohort(cohort_dir)
    scorable = cohort.cases(cohorts=check_cohort(model, cohort))
    ids = scorable if case_ids is None else [c for c in case_ids if c in set(scorable)]
    members = progress(model.members) if progress else model.members
    per_member = [predict_member(model.member_dir(member), cohort, ids, model.classes) for member in members]
    return ensemble(per_member, model.classes)


def predict_member(directory: Path, cohort: Cohort, ids: list[str], classes_of: dict[str, list[str]]) -> pd.DataFrame:
    """One fold model's predictions, with ``risk_percentile`` among its training cases' risks."""
    loop_config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    config = TrainConfig.model_validate(loop_config["train"])
    bank = LabelBank.load(directory / LABEL_BANK)
    module = build_train_module(config, cohort, bank)
    weights = torch.load(directory / ADAPTER, weights_only=True, map_location="cpu")
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if set(weights) != set(trainable):
        differing = sorted(set(weights) ^ set(trainable))[:3]
        raise InputError(f"{directory / ADAPTER}: weights do not match the model its config builds ({differing} ...)")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(weights[name].to(param.dtype))
    normalised = normalised_modalities(config.model.modalities)
    normalizers = {name: ModalityNormalizer.load(directory / normalizer_file(name)) for name in normalised}
    batcher = CaseBatcher(cohort, bank, [], modalities=config.model.modalities, max_tiles=config.max_tiles, normalizers=normalizers)
    module.eval()
    batches = seeded_batches(batcher, config.seed, "evaluation", torch.device("cpu"), torch.float32)
    rows = collect_case_outputs(module, batches, ids, with_loss=False, batch_tiles=config.evaluation_batch_tiles)
    train_cases = pd.read_parquet(directory / TRAIN_CASES)
    train_rows = _rows_from_frame(train_cases, classes_of) if module.objective.predicts_with_probes else []
    predictions = predict_cases(module.objective, train_rows, rows, classes_of)
    return predictions.assign(risk_percentile=training_percentile(predictions, train_cases))


def training_percentile(cases: pd.DataFrame, train: pd.DataFrame) -> pd.Series:
    """``cases``' risk as the share of the same model's training cases of its cancer type with a
    lower risk (ties count half), in [0, 1]: what makes risks of different fold models
    comparable, with nothing taken from ``cases`` themselves. 0.5 is the training median; a
    cancer type without training risks gives NaN."""
    percentile = pd.Series(np.nan, index=cases.index, dtype=float)
    for cohort, group in cases.groupby("cohort", sort=False):
        reference = np.sort(train.loc[train["cohort"] == cohort, "risk"].dropna().to_numpy(dtype=float))
        if len(reference):
            risk = group["risk"].to_numpy(dtype=float)
            below = np.searchsorted(reference, risk, side="left")
            not_above = np.searchsorted(reference, risk, side="right")
            percentile[group.index] = np.where(np.isnan(risk), np.nan, (below + not_above) / (2 * len(reference)))
    return percentile


def _rows_from_frame(frame: pd.DataFrame, classes_of: dict[str, list[str]]) -> list[dict]:
    """Saved training cases back into ``collect_case_outputs`` rows (for refitting probes)."""
    tasks = [c.removeprefix("embedding_") for c in frame.columns if c.startswith("embedding_")]
    return [
        {
            "case_id": r["case_id"], "cohort": r["cohort"], "subtype_index": classes_of[r["cohort"]].index(r["subtype"]),
            "time": r["time"], "event": r["event"], "embeddings": {t: np.asarray(r[f"embedding_{t}"], dtype=np.float32) for t in tasks},
        }
        for r in frame.to_dict("records")
    ]


def ensemble(per_member: list[pd.DataFrame], classes_of: dict[str, list[str]]) -> pd.DataFrame:
    """The members' predictions combined per case (see the module docstring)."""
    stacked = pd.concat([p.assign(member=i) for i, p in enumerate(per_member)], ignore_index=True)
    rows = []
    for (case_id, cohort), group in stacked.groupby(["case_id", "cohort"], sort=True):
        probabilities = np.mean(np.stack(list(group["class_probabilities"])), axis=0)
        risk = float(group["risk_percentile"].mean())
        rows.append({
            "case_id": case_id, "cohort": cohort,
            "risk": risk,
            "risk_sd": float(group["risk_percentile"].std(ddof=1)) if len(group) > 1 else float("nan"),
            "risk_group": "high" if risk > 0.5 else "low",
            "predicted_subtype": classes_of[str(cohort)][int(np.argmax(probabilities))],
            "class_probabilities": probabilities.astype(np.float32).tolist(),
            "models": len(group),
        })
    return pd.DataFrame(rows)


PREDICTION_FORMATS = (".parquet", ".csv")


def check_predictions_path(path: str | Path) -> Path:
    """Refuse, before any case is scored, an output that cannot be written: an unknown suffix,
    a folder, or a location that is read-only, missing its parent or not a folder."""
    path = Path(path)
    if path.suffix.lower() not in PREDICTION_FORMATS:
        raise InputError(f"--out {path}: write .parquet or .csv (by its suffix)")
    if path.is_dir():
        raise InputError(f"--out {path}: is a folder; name a file in it, e.g. {path / 'predictions.parquet'}")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InputError(f"--out {path}: cannot write there ({exc.strerror or exc}); nothing was scored") from exc
    return path


def write_predictions(frame: pd.DataFrame, path: str | Path, classes_of: dict[str, list[str]]) -> Path:
    """Parquet, or CSV by the suffix (there ``class_probabilities`` is JSON: subtype -> probability)."""
    path = check_predictions_path(path)
    if path.suffix.lower() == ".csv":
        table = frame.assign(class_probabilities=[
            json.dumps(dict(zip(classes_of[cohort], np.round(probabilities, 6).tolist(), strict=False)))
            for cohort, probabilities in zip(frame["cohort"], frame["class_probabilities"], strict=True)
        ])
        write_text_atomic(path, table.to_csv(index=False))
    else:
        write_parquet_atomic(path, pa.Table.from_pandas(frame, preserve_index=False))
    return path
