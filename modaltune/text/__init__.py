"""Labels as text: per-case prompts, text encoders (LLMs and controls), cached label banks."""

from modaltune.text.bank import LabelBank, TextEmbeddingCache, build_label_bank
from modaltune.text.encoders import (
    TEXT_ENCODERS,
    TextEncoder,
    TextEncoderEntry,
    build_text_encoder,
    known_text_encoders,
)
from modaltune.text.prompts import TASKS, Prompt, PromptBuilder, SurvivalBins

__all__ = [
    "TASKS",
    "TEXT_ENCODERS",
    "LabelBank",
    "Prompt",
    "PromptBuilder",
    "SurvivalBins",
    "TextEmbeddingCache",
    "TextEncoder",
    "TextEncoderEntry",
    "build_label_bank",
    "build_text_encoder",
    "known_text_encoders",
]
