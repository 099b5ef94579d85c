"""The ModalTune model: a frozen SLFM, Modal Adapters and modality encoders -> one embedding.

Per case and task: modality tokens ``[task; rna tokens; clinical]`` (those configured) interact
with the SLFM's tile tokens through the adapters; the output is
``Linear(LayerNorm(slide + task token + mean(rna tokens) + clinical token))``, where slide is the
SLFM's own slide embedding of the last frozen layer's tokens (GigaPath: CLS after its final
norm(s); TITAN: its attentional pooler) and the modality terms are the
extracted tokens. Each configured modality contributes one summand, as in the reference's
``token_agg="sum"``, ``prompt_agg="avg"`` setting (which, unlike here, skips the final norm).

Frozen-prefix path: layers before the first interaction block see no trainable input, so
``encode_prefix`` (``embed`` + ``layers[:prefix_depth]``) can be computed once per slide and
cached; ``forward_from_prefix`` continues from it, and ``forward`` is exactly the two chained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from modaltune.errors import InputError
from modaltune.models.encoder_weights import load_slide_encoder
from modaltune.models.frozen_encoder import EncoderConfig, FrozenSlideEncoder
from modaltune.models.modal_adapter import Layout, ModalAdapter, resolve_adapter_layout
from modaltune.models.modality_encoders import ClinicalEncoder, RnaPathwayEncoder, TaskTokens
from modaltune.models.slide_encoder import SlideEncoderConfig

logger = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("wsi", "rna", "clinical")


@dataclass
class ModalTuneConfig:
    """Everything that shapes a ModalTune model; defaults are the paper's GigaPath setting.

    Adapter placement: ``adapter_layout`` (explicit inclusive ``[start, end]`` blocks) or
    ``adapter_depth`` (that many blocks of ``adapter_block_size`` layers, default
    ``encoder.depth // 3``, over the last layers; 0 = no adapters); neither = the paper's
    three blocks. ``encoder_checkpoint`` / ``encoder_hub_id`` name pretrained SLFM weights;
    with neither the SLFM is random (tests, demos).
    """

    encoder: EncoderConfig = field(default_factory=SlideEncoderConfig.gigapath)
    modalities: tuple[str, ...] = ("wsi", "rna")
    adapter_layout: tuple[tuple[int, int], ...] | None = None
    adapter_depth: int | None = None
    adapter_block_size: int | None = None
    adapter_heads: int = 12
    cffn_ratio: float = 0.25
    adapter_drop_path: float = 0.1
    extra_extractors: int = 2
    modality_self_attention: bool = True
    rna_group_sizes: tuple[int, ...] = ()
    n_rna_tokens: int = 64
    rna_hidden: int = 256
    rna_mixer_depth: int = 3
    rna_dropout: float = 0.25
    clinical_in_features: int = 5
    n_tasks: int = 3
    out_dim: int = 256
    encoder_checkpoint: str | None = None
    encoder_hub_id: str | None = None

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.rna_group_sizes = tuple(self.rna_group_sizes)
        if self.adapter_layout is not None:
            self.adapter_layout = tuple(tuple(block) for block in self.adapter_layout)
        unknown = sorted(set(self.modalities) - set(MODALITIES))
        if unknown or "wsi" not in self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise InputError(
                f"ModalTuneConfig.modalities={list(self.modalities)} must be distinct entries of {list(MODALITIES)} "
                "and include 'wsi'"
            )
        if "rna" in self.modalities and not self.rna_group_sizes:
            raise InputError("ModalTuneConfig.rna_group_sizes is empty but modalities include 'rna'")
        for key in ("n_tasks", "out_dim", "adapter_heads", "n_rna_tokens", "rna_hidden", "clinical_in_features"):
            if getattr(self, key) < 1:
                raise InputError(f"ModalTuneConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.extra_extractors < 0:
            raise InputError(f"ModalTuneConfig.extra_extractors must be >= 0, got {self.extra_extractors}")
        if not 0.0 < self.cffn_ratio <= 1.0:
            raise InputError(f"ModalTuneConfig.cffn_ratio must be in (0, 1], got {self.cffn_ratio}")
        if self.layout and int(self.encoder.dim * self.cffn_ratio) % self.adapter_heads:
            raise InputError(
                f"ModalTuneConfig.adapter_heads={self.adapter_heads} must divide the adapter bottleneck "
                f"encoder.dim*cffn_ratio = {int(self.encoder.dim * self.cffn_ratio)}"
            )

    @property
    def layout(self) -> Layout:
        """The resolved, validated interaction blocks."""
        return resolve_adapter_layout(
            self.encoder.depth, self.adapter_layout, self.adapter_depth, self.adapter_block_size
        )

    @property
    def n_modality_tokens(self) -> int:
        return 1 + self.n_rna_tokens * ("rna" in self.modalities) + ("clinical" in self.modalities)

    @classmethod
    def tiny(cls, **overrides: Any) -> ModalTuneConfig:
        """A CPU-sized model for tests and demos: tiny encoder, 6 pathways, 4 RNA tokens."""
        base = cls(
            encoder=SlideEncoderConfig.tiny(),
            modalities=("wsi", "rna", "clinical"),
            adapter_heads=4,
            rna_group_sizes=(3, 5, 2, 4, 6, 3),
            n_rna_tokens=4,
            rna_hidden=16,
            out_dim=16,
        )
        return replace(base, **overrides)


class ModalTuneModel(nn.Module):
    """Frozen SLFM + Modal Adapters + modality encoders + output head.

    The SLFM stays frozen and in eval mode under ``model.train()``; only the new modules are
    trainable, and ``adapter_state_dict`` saves just those.
    """

    def __init__(self, config: ModalTuneConfig, encoder: FrozenSlideEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        if encoder is None:
            encoder = load_slide_encoder(config.encoder, config.encoder_checkpoint, config.encoder_hub_id)
        elif (encoder.dim, encoder.depth) != (config.encoder.dim, config.encoder.depth):
            raise InputError(
                f"the given slide encoder (dim {encoder.dim}, depth {encoder.depth}) does not match "
                f"ModalTuneConfig.encoder (dim {config.encoder.dim}, depth {config.encoder.depth})"
            )
        self.encoder = encoder.freeze()
        dim = encoder.dim
        layout = config.layout
        self.adapter = (
            ModalAdapter(
                dim,
                layout,
                config.n_modality_tokens,
                heads=config.adapter_heads,
                cffn_ratio=config.cffn_ratio,
                drop_path=config.adapter_drop_path,
                extra_extractors=config.extra_extractors,
                modality_self_attention=config.modality_self_attention,
            )
            if layout
            else None
        )
        self.task_tokens = TaskTokens(config.n_tasks, dim)
        self.rna_encoder = (
            RnaPathwayEncoder(
                config.rna_group_sizes,
                dim,
                n_tokens=config.n_rna_tokens,
                mixer_depth=config.rna_mixer_depth,
                hidden=config.rna_hidden,
                dropout=config.rna_dropout,
            )
            if "rna" in config.modalities
            else None
        )
        self.clinical_encoder = (
            ClinicalEncoder(config.clinical_in_features, dim) if "clinical" in config.modalities else None
        )
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, config.out_dim)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def prefix_depth(self) -> int:
        """Number of leading frozen layers no adapter touches (all of them without adapters)."""
        return self.adapter.start if self.adapter is not None else self.encoder.depth

    @torch.no_grad()
    def encode_prefix(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``embed`` + ``layers[:prefix_depth]``: ``[B, 1+N, dim]``, constant during training, so
        it may be cached per slide (and reused across epochs and trials of the same SLFM and
        ``prefix_depth``)."""
        context = self.encoder.layer_context(coords)
        return self.encoder.run_layers(self.encoder.embed(features, coords), 0, self.prefix_depth, context)

    def interact(
        self,
        prefix: torch.Tensor,
        coords: torch.Tensor,
        task: torch.Tensor,
        rna: torch.Tensor | None = None,
        clinical: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the remaining layers with the adapters (``coords``: the prefix's tiles, for an SLFM
        whose layers need their positions). Returns the SLFM's slide embedding ``[B, dim]`` (its
        final-normed CLS, or TITAN's pooled one) and the modality tokens ``[B, M, dim]`` (task first)."""
        modality = self.modality_tokens(task, rna, clinical)
        context = self.encoder.layer_context(coords)

        def run(tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            return self.encoder.run_layers(tokens, start, stop, context)

        tokens = prefix
        if self.adapter is not None:
            tokens, modality = self.adapter(tokens, modality, run, self.encoder.depth)
        return self.encoder.pool(tokens), modality

    def forward_from_prefix(
        self,
        prefix: torch.Tensor,
        coords: torch.Tensor,
        task: torch.Tensor,
        rna: torch.Tensor | None = None,
        clinical: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embedding ``[B, out_dim]`` from a (cached) ``encode_prefix`` output of tiles at ``coords``."""
        cls, modality = self.interact(prefix, coords, task, rna, clinical)
        summary = cls + modality[:, 0]
        if self.rna_encoder is not None:
            summary = summary + modality[:, 1 : 1 + self.config.n_rna_tokens].mean(dim=1)
        if self.clinical_encoder is not None:
            summary = summary + modality[:, -1]
        return self.head(self.head_norm(summary))

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor,
        task: torch.Tensor,
        rna: torch.Tensor | None = None,
        clinical: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tile features ``[B, N, in_dim]``, level-0 pixel coords ``[B, N, 2]``, task ids ``[B]``
        and, for configured modalities, ``rna [B, G]`` / ``clinical [B, C]`` -> ``[B, out_dim]``.
        Inputs of modalities that are not configured are ignored."""
        return self.forward_from_prefix(self.encode_prefix(features, coords), coords, task, rna, clinical)

    def modality_tokens(
        self, task: torch.Tensor, rna: torch.Tensor | None, clinical: torch.Tensor | None
    ) -> torch.Tensor:
        """``[task token; rna tokens; clinical token]`` for the configured modalities."""
        tokens = [self.task_tokens(task)]
        if self.rna_encoder is not None:
            if rna is None:
                raise ValueError("the model is configured with the 'rna' modality but rna=None")
            tokens.append(self.rna_encoder(rna))
        if self.clinical_encoder is not None:
            if clinical is None:
                raise ValueError("the model is configured with the 'clinical' modality but clinical=None")
            tokens.append(self.clinical_encoder(clinical))
        return torch.cat(tokens, dim=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if param.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if not param.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        """Trainable / frozen totals and the trainable count of each new component."""
        counts = {
            "trainable": sum(p.numel() for p in self.trainable_parameters()),
            "frozen": sum(p.numel() for p in self.frozen_parameters()),
        }
        for name in ("adapter", "rna_encoder", "clinical_encoder", "task_tokens"):
            module = getattr(self, name)
            counts[name] = sum(p.numel() for p in module.parameters()) if module is not None else 0
        counts["head"] = sum(p.numel() for p in (*self.head_norm.parameters(), *self.head.parameters()))
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
