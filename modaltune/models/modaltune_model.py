"""The ModalTune model: a frozen SLFM, Modal Adapters and modality encoders -> one embedding.

Per case and task: modality tokens ``[task; each configured modality's tokens]`` (in the order
of ``modalities``, each modality's encoder from ``MODALITY_ENCODERS``) interact with the SLFM's
tile tokens through the adapters; the output is
``Linear(LayerNorm(slide + task token + each modality's summary))`` (RNA: the mean of its tokens;
clinical: its token), where slide is the SLFM's own slide embedding of the last frozen layer's
tokens (GigaPath: CLS after its final norm(s); TITAN: its attentional pooler) and the modality
terms are the extracted tokens. Each configured modality contributes one summand, as in the
reference's ``token_agg="sum"``, ``prompt_agg="avg"`` setting (which, unlike here, skips the
final norm).

Frozen-prefix path: layers before the first interaction block see no trainable input, so
``encode_prefix`` (``embed`` + ``layers[:prefix_depth]``) can be computed once per slide and
cached; ``forward_from_prefix`` continues from it, and ``forward`` is exactly the two chained.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast

import torch
from torch import nn

from modaltune.errors import InputError
from modaltune.models.encoder_weights import load_slide_encoder
from modaltune.models.frozen_encoder import EncoderConfig, FrozenSlideEncoder
from modaltune.models.methods import FinetuneSettings
from modaltune.models.modal_adapter import Layout, ModalAdapter, resolve_adapter_layout
from modaltune.models.modality_encoders import DEFAULT_TASKS, IMAGE, ModalityEncoder, ModalityEncoderEntry, TaskTokens
from modaltune.models.model_settings import ModelSettings, model_settings
from modaltune.models.slide_encoder import SlideEncoderConfig

logger = logging.getLogger(__name__)

# ``ModalTuneConfig.tiny``'s settings: CPU-sized, the paper's three adapter blocks of the tiny encoder.
TINY_MODEL: dict[str, Any] = {
    "modalities": ["wsi", "rna", "clinical"], "adapter_depth": None, "adapter_heads": 4, "out_dim": 16, "n_rna_tokens": 4, "rna_hidden": 16,
}


@dataclass
class ModalTuneConfig:
    """A model for one cohort: its ``settings`` (``ModelSettings``, every choice and default) and
    what the cohort fixes: the slide encoder's config built for its tile-feature width and tile
    size, and ``modality_inputs``, for each modality other than ``wsi``, the segment sizes of its
    case vector (RNA: genes per pathway; a plain vector: its width). Made by
    ``ModelSettings.build`` / ``for_cohort``; checked here for what depends on the cohort.
    """

    settings: ModelSettings
    encoder: EncoderConfig
    modality_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    n_tasks: int = len(DEFAULT_TASKS)

    def __post_init__(self) -> None:
        self.modality_inputs = {name: tuple(segments) for name, segments in self.modality_inputs.items()}
        for name in self.token_modalities:
            if not self.modality_inputs.get(name):
                raise InputError(f"ModalTuneConfig.modality_inputs has no input shape for modality {name!r}")
        if self.n_tasks < 1:
            raise InputError(f"ModalTuneConfig.n_tasks must be >= 1, got {self.n_tasks}")
        if self.finetune is not None and self.layout:
            raise InputError(f"method 'finetune' trains no Modal Adapters, but the model places them at {list(self.layout)}")
        if self.finetune is not None and self.finetune.unfrozen(self.encoder.depth) > self.encoder.depth:
            raise InputError(
                f"model.method_settings.unfrozen_layers={self.finetune.unfrozen_layers} exceeds the slide encoder's "
                f"{self.encoder.depth} layers"
            )
        bottleneck = int(self.encoder.dim * self.settings.cffn_ratio)
        if self.layout and bottleneck % self.settings.adapter_heads:
            raise InputError(
                f"model.adapter_heads={self.settings.adapter_heads} must divide the adapter bottleneck "
                f"encoder dim * cffn_ratio = {bottleneck}"
            )

    @property
    def layout(self) -> Layout:
        """The resolved, validated interaction blocks."""
        settings = self.settings
        explicit = tuple(tuple(block) for block in settings.adapter_layout) if settings.adapter_layout else None
        return resolve_adapter_layout(
            self.encoder.depth, explicit, None if explicit else settings.adapter_depth, settings.adapter_block_size
        )

    @property
    def finetune(self) -> FinetuneSettings | None:
        """What of the SLFM trains (the ``finetune`` method); None: it is frozen."""
        settings = self.settings.method_settings
        return settings if isinstance(settings, FinetuneSettings) else None

    @property
    def unfrozen_layers(self) -> int:
        """How many of the SLFM's last layers train (0: it is frozen)."""
        return self.finetune.unfrozen(self.encoder.depth) if self.finetune is not None else 0

    @property
    def token_modalities(self) -> tuple[str, ...]:
        """The configured modalities other than the slide, in token order."""
        return tuple(name for name in self.settings.modalities if name != IMAGE)

    @property
    def modality_entries(self) -> dict[str, ModalityEncoderEntry]:
        """Each token modality's entry with its settings, in token order."""
        return {name: self.settings.modality_entry(name) for name in self.token_modalities}

    @property
    def n_modality_tokens(self) -> int:
        """The task token and every configured modality's tokens."""
        return 1 + sum(entry.n_tokens for entry in self.modality_entries.values())

    @classmethod
    def tiny(cls, **overrides: Any) -> ModalTuneConfig:
        """A CPU-sized model for tests and demos (``TINY_MODEL``: the tiny encoder, 6 pathways,
        4 RNA tokens, an 8-gene mutation panel); ``overrides`` are settings (``ModelSettings``
        keys) or fields of this class (``encoder``, ``modality_inputs``, ``n_tasks``)."""
        own = {f.name for f in fields(cls)} - {"settings"}
        parts: dict[str, Any] = {
            "encoder": SlideEncoderConfig.tiny(),
            "modality_inputs": {"rna": (3, 5, 2, 4, 6, 3), "clinical": (5,), "mutations": (8,)},
        }
        parts |= {key: value for key, value in overrides.items() if key in own}
        settings = model_settings(TINY_MODEL | {key: value for key, value in overrides.items() if key not in own}, "ModalTuneConfig.tiny")
        return cls(settings, **parts)


class ModalTuneModel(nn.Module):
    """Frozen SLFM + Modal Adapters + modality encoders + output head.

    The SLFM stays frozen and in eval mode under ``model.train()``; only the new modules are
    trainable, and ``adapter_state_dict`` saves just those. Under ``finetune`` its last
    ``unfrozen_layers`` layers and the weights its slide embedding reads after them train as
    well (all of it, the tile embedding included, when every layer does), still in eval mode:
    the SLFM's dropout and drop-path stay off, as in the frozen model.
    """

    def __init__(self, config: ModalTuneConfig, encoder: FrozenSlideEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        settings = config.settings
        if encoder is None:
            encoder = load_slide_encoder(config.encoder, settings.encoder_checkpoint, settings.encoder_hub_id)
        elif (encoder.dim, encoder.depth) != (config.encoder.dim, config.encoder.depth):
            raise InputError(
                f"the given slide encoder (dim {encoder.dim}, depth {encoder.depth}) does not match "
                f"ModalTuneConfig.encoder (dim {config.encoder.dim}, depth {config.encoder.depth})"
            )
        self.encoder = encoder.freeze()
        for param in self._tuned_encoder_parameters():
            param.requires_grad_(True)
        dim = encoder.dim
        layout = config.layout
        self.adapter = (
            ModalAdapter(
                dim,
                layout,
                config.n_modality_tokens,
                heads=settings.adapter_heads,
                cffn_ratio=settings.cffn_ratio,
                drop_path=settings.adapter_drop_path,
                extra_extractors=settings.extra_extractors,
                modality_self_attention=settings.modality_self_attention,
            )
            if layout
            else None
        )
        self.task_tokens = TaskTokens(config.n_tasks, dim)
        self.modality_encoders = nn.ModuleDict(
            {name: entry.build(config.modality_inputs[name], dim) for name, entry in config.modality_entries.items()}
        )
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, settings.out_dim)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def _tuned_encoder_parameters(self) -> list[nn.Parameter]:
        """The SLFM weights ``finetune`` trains: its last ``unfrozen_layers`` layers and
        ``pooling_parameters``, with ``embedding_parameters`` when the whole SLFM trains."""
        tuning, encoder = self.config.finetune, self.encoder
        if tuning is None:
            return []
        first = encoder.depth - self.config.unfrozen_layers
        tuned = [param for layer in encoder.layers[first:] for param in layer.parameters()] + encoder.pooling_parameters()
        return tuned + encoder.embedding_parameters() if tuning.unfrozen_layers is None else tuned

    @property
    def _embedding_trains(self) -> bool:
        return self.config.finetune is not None and self.config.finetune.unfrozen_layers is None

    @property
    def prefix_depth(self) -> int:
        """Number of leading frozen layers no adapter touches (all of them without adapters, those
        before the first unfrozen layer under ``finetune``)."""
        if self.adapter is not None:
            return self.adapter.start
        return self.encoder.depth - self.config.unfrozen_layers

    def encode_prefix(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``embed`` + ``layers[:prefix_depth]``: ``[B, 1+N, dim]``, constant during training, so
        it may be cached per slide (and reused across epochs and trials of the same SLFM and
        ``prefix_depth``). Computed without gradients, unless the tile embedding trains (a
        ``finetune`` of the whole SLFM, whose prefix is 0 layers and never cached)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._embedding_trains):
            context = self.encoder.layer_context(coords)
            return self.encoder.run_layers(self.encoder.embed(features, coords), 0, self.prefix_depth, context)

    def interact(
        self,
        prefix: torch.Tensor,
        coords: torch.Tensor,
        task: torch.Tensor,
        inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the remaining layers with the adapters (``coords``: the prefix's tiles, for an SLFM
        whose layers need their positions). Returns the SLFM's slide embedding ``[B, dim]`` (its
        final-normed CLS, or TITAN's pooled one) and the modality tokens ``[B, M, dim]`` (task first)."""
        modality = self.modality_tokens(task, inputs or {})
        context = self.encoder.layer_context(coords)

        def run(tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return self.encoder.run_layers(tokens, start, stop, context)

        if self.adapter is not None:
            tokens, modality = self.adapter(prefix, modality, run, self.encoder.depth)
        else:  # the layers after the prefix: none for a frozen SLFM, the unfrozen ones under finetune
            tokens = run(prefix, self.prefix_depth, self.encoder.depth)
        return self.encoder.pool(tokens), modality

    def forward_from_prefix(
        self,
        prefix: torch.Tensor,
        coords: torch.Tensor,
        task: torch.Tensor,
        inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Embedding ``[B, out_dim]`` from a (cached) ``encode_prefix`` output of tiles at ``coords``."""
        cls, modality = self.interact(prefix, coords, task, inputs)
        summary, start = cls + modality[:, 0], 1
        for module in self.modality_encoders.values():
            encoder = cast(ModalityEncoder, module)
            summary = summary + encoder.summary(modality[:, start : start + encoder.n_tokens])
            start += encoder.n_tokens
        return self.head(self.head_norm(summary))

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor,
        task: torch.Tensor,
        inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Tile features ``[B, N, in_dim]``, level-0 pixel coords ``[B, N, 2]``, task ids ``[B]``
        and ``inputs``, each configured modality's case vectors by name (e.g. ``{"rna": [B, G],
        "clinical": [B, C]}``) -> ``[B, out_dim]``. Inputs of modalities that are not configured
        are ignored."""
        return self.forward_from_prefix(self.encode_prefix(features, coords), coords, task, inputs)

    def modality_tokens(self, task: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[task token; each configured modality's tokens]``."""
        tokens = [self.task_tokens(task)]
        for name, encoder in self.modality_encoders.items():
            if name not in inputs:
                raise ValueError(f"the model is configured with the {name!r} modality but inputs has no {name!r}")
            tokens.append(encoder(inputs[name]))
        return torch.cat(tokens, dim=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if param.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if not param.requires_grad]

    def lr_scales(self) -> dict[str, float]:
        """The trainable weights' learning-rate multipliers other than 1, by parameter name: none,
        except under ``finetune`` with ``layer_decay`` below 1, where layer ``i`` of the SLFM
        learns at ``layer_decay ** (depth - 1 - i)`` times the run's rate and its tile embedding
        at ``layer_decay ** depth`` times (the weights after the last layer, as the heads, at 1)."""
        tuning, encoder = self.config.finetune, self.encoder
        if tuning is None or tuning.layer_decay == 1:
            return {}
        decay, depth = tuning.layer_decay, encoder.depth
        scale = {id(param): decay**depth for param in encoder.embedding_parameters()}
        for i, layer in enumerate(encoder.layers):
            scale |= {id(param): decay ** (depth - 1 - i) for param in layer.parameters()}
        return {
            name: scale[id(param)]
            for name, param in self.named_parameters()
            if param.requires_grad and scale.get(id(param), 1.0) != 1.0
        }

    def parameter_counts(self) -> dict[str, int]:
        """Trainable / frozen totals and the trainable count of each new component."""
        counts = {
            "trainable": sum(p.numel() for p in self.trainable_parameters()),
            "frozen": sum(p.numel() for p in self.frozen_parameters()),
        }
        for name in ("adapter", "task_tokens"):
            module = getattr(self, name)
            counts[name] = sum(p.numel() for p in module.parameters()) if module is not None else 0
        for name, encoder in self.modality_encoders.items():
            counts[f"{name}_encoder"] = sum(p.numel() for p in encoder.parameters())
        counts["head"] = sum(p.numel() for p in (*self.head_norm.parameters(), *self.head.parameters()))
        if self.config.finetune is not None:
            counts["encoder"] = sum(p.numel() for p in self.encoder.parameters() if p.requires_grad)
        return counts

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable weights (MBs, not the SLFM's GBs), detached copies on CPU."""
        return {name: param.detach().cpu().clone() for name, param in self.named_parameters() if param.requires_grad}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what ``adapter_state_dict`` saved; every trainable weight must be present and
        nothing else, and the frozen SLFM is left untouched."""
        trainable = {name: param for name, param in self.named_parameters() if param.requires_grad}
        missing, unexpected = sorted(set(trainable) - set(state)), sorted(set(state) - set(trainable))
        if missing or unexpected:
            raise InputError(
                f"adapter state does not match the model: missing {missing[:8]} ({len(missing)}), "
                f"unexpected {unexpected[:8]} ({len(unexpected)})"
            )
        for name, param in trainable.items():
            if state[name].shape != param.shape:
                raise InputError(
                    f"adapter weight {name} has shape {tuple(state[name].shape)}, model expects {tuple(param.shape)}"
                )
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(state[name])
