"""Baseline methods with ``ModalTuneModel``'s forward contract, one module per method, each
registered in ``METHOD_NETWORKS`` under its name with its own settings schema and its parameter
count at the published sizes: ``abmil`` and ``transmil`` (tile features; with other modalities,
late fusion "-cat"), ``snn`` (case vectors only), ``mcat`` and ``survpath`` (gene groups and
tiles); and the methods that are ModalTune's model on the frozen SLFM (``slfm.py``:
``modaltune``, ``linear_probe`` and ``finetune``)."""

from modaltune.models.methods.abmil import Abmil, AbmilSettings, GatedAttentionPool
from modaltune.models.methods.base import (
    METHOD_NETWORKS,
    REFERENCE_OMIC_SIZES,
    MethodNetwork,
    MethodSettings,
    PublishedSize,
    TaskHeads,
    check_method_modalities,
    method_names,
)
from modaltune.models.methods.mcat import Mcat, McatSettings
from modaltune.models.methods.slfm import FINETUNE, LINEAR_PROBE, MODALTUNE, SLFM_METHODS, FinetuneMethod, FinetuneSettings, SlfmMethod
from modaltune.models.methods.snn import CaseVectorSnn, PathwayTokens, Snn, SnnSettings
from modaltune.models.methods.survpath import SurvPath, SurvPathSettings
from modaltune.models.methods.transmil import NystromAttention, TransMil, TransMilSettings

__all__ = [
    "FINETUNE",
    "LINEAR_PROBE",
    "METHOD_NETWORKS",
    "MODALTUNE",
    "REFERENCE_OMIC_SIZES",
    "SLFM_METHODS",
    "Abmil",
    "AbmilSettings",
    "CaseVectorSnn",
    "FinetuneMethod",
    "FinetuneSettings",
    "GatedAttentionPool",
    "Mcat",
    "McatSettings",
    "MethodNetwork",
    "MethodSettings",
    "NystromAttention",
    "PathwayTokens",
    "PublishedSize",
    "SlfmMethod",
    "Snn",
    "SnnSettings",
    "SurvPath",
    "SurvPathSettings",
    "TaskHeads",
    "TransMil",
    "TransMilSettings",
    "check_method_modalities",
    "method_names",
]
