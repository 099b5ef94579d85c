"""ModalTune's Modal Adapter (Ramanathan et al., ICCV 2025), after ViT-Adapter (Chen et al.,
ICLR 2023, "Vision Transformer Adapter for Dense Predictions").

The frozen SLFM's layers are grouped into interaction blocks ``[start, end]``. In each block:

1. *injector*: the image tile tokens (queries) cross-attend to the modality tokens (keys and
   values, plus a learned modality positional embedding); the result is added through a
   per-channel scale ``gamma`` initialised to zero, so an untrained model is exactly the SLFM;
2. the block's frozen layers run on ``[CLS; injected tile tokens]``;
3. *extractor*: the modality tokens (queries) cross-attend to the tile tokens, followed by a
   bottleneck FFN with drop-path; the last block has two extra extractors.

Before every block but the first, the modality tokens may attend to each other (pre-norm
self-attention). All adapter attention runs in a bottleneck of width ``dim * cffn_ratio``.

Every sub-layer here has a single residual. The reference code's attention layer keeps its own
residual while its callers add another, so there the injector adds ``gamma * (x + attn)`` and
the extractor ``2 * c + attn``; the reference also stacks a redundant ``width x width`` query
projection (and one on the output) inside ``nn.MultiheadAttention``, which is dropped here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modaltune.errors import InputError
from modaltune.models.drop_path import DropPath

Layout = tuple[tuple[int, int], ...]

# The paper splits the SLFM into three equal interaction blocks (GigaPath: [[0,3],[4,7],[8,11]],
# TITAN: [[0,1],[2,3],[4,5]]); an adapter depth counts such blocks from the last layer backwards.
PAPER_ADAPTER_BLOCKS = 3


def resolve_adapter_layout(
    n_layers: int,
    layout: Sequence[Sequence[int]] | None = None,
    depth: int | None = None,
    block_size: int | None = None,
) -> Layout:
    """Turn an explicit ``layout`` or an adapter ``depth`` into validated ``(start, end)`` blocks.

    ``depth=k`` places ``k`` contiguous blocks of ``block_size`` layers (default
    ``n_layers // 3``, the paper's block) over the *last* layers; ``k=0`` means no adapters
    (frozen SLFM + head, the linear-probe baseline). With neither given, the paper's three
    blocks. Blocks are inclusive, ordered and disjoint; layers outside them run unchanged.
    """
    if layout is not None and depth is not None:
        raise InputError(f"set adapter_layout or adapter_depth, not both (got {layout!r} and {depth!r})")
    if layout is not None:
        return _validate_layout(n_layers, layout)
    depth = PAPER_ADAPTER_BLOCKS if depth is None else depth
    size = n_layers // PAPER_ADAPTER_BLOCKS if block_size is None else block_size
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise InputError(f"adapter_depth must be a non-negative integer, got {depth!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InputError(f"adapter_block_size must be a positive integer, got {size!r} (encoder has {n_layers} layers)")
    if depth * size > n_layers:
        raise InputError(
            f"adapter_depth={depth} blocks of {size} layers need {depth * size} layers; the encoder has {n_layers}"
        )
    first = n_layers - depth * size
    return tuple((first + i * size, first + (i + 1) * size - 1) for i in range(depth))


def _validate_layout(n_layers: int, layout: Sequence[Sequence[int]]) -> Layout:
    blocks: list[tuple[int, int]] = []
    for i, block in enumerate(layout):
        if (
            isinstance(block, (str, bytes))
            or not isinstance(block, Sequence)
            or len(block) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in block)
        ):
            raise InputError(f"adapter_layout[{i}]={block!r} must be a pair of layer indices [start, end]")
        start, end = block
        if not 0 <= start <= end < n_layers:
            raise InputError(
                f"adapter_layout[{i}]=[{start}, {end}] must satisfy 0 <= start <= end < {n_layers} (encoder depth)"
            )
        if blocks and start <= blocks[-1][1]:
            raise InputError(
                f"adapter_layout[{i}]=[{start}, {end}] overlaps or precedes block {list(blocks[-1])}; "
                "blocks must be ordered and disjoint"
            )
        blocks.append((start, end))
    return tuple(blocks)


class _BottleneckAttention(nn.Module):
    """Multi-head attention computed in a narrow width: project queries, keys and values from
    ``dim`` to ``width``, attend with ``heads`` heads, project back to ``dim``."""

    def __init__(self, dim: int, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, width)
        self.k_proj = nn.Linear(dim, width)
        self.v_proj = nn.Linear(dim, width)
        self.out_proj = nn.Linear(width, dim)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split(proj(x)) for proj, x in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class Injector(nn.Module):
    """Tile tokens read the modality tokens; gated by ``gamma`` (zero at init)."""

    def __init__(self, dim: int, width: int, heads: int) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.attn = _BottleneckAttention(dim, width, heads)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, tiles: torch.Tensor, modality: torch.Tensor, modality_pos: torch.Tensor) -> torch.Tensor:
        memory = self.memory_norm(modality) + modality_pos
        return tiles + self.gamma * self.attn(self.query_norm(tiles), memory, memory)


class Extractor(nn.Module):
    """Modality tokens read the tile tokens, then a bottleneck FFN (ReLU) with drop-path."""

    def __init__(self, dim: int, width: int, heads: int, drop_path: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.attn = _BottleneckAttention(dim, width, heads)
        self.ffn_norm = nn.LayerNorm(dim)
        first, second = nn.Linear(dim, width), nn.Linear(width, dim)
        self.ffn = nn.Sequential(first, nn.ReLU(), second)
        self.drop_path = DropPath(drop_path)
        for linear in (first, second):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, modality: torch.Tensor, tiles: torch.Tensor, modality_pos: torch.Tensor) -> torch.Tensor:
        memory = self.memory_norm(tiles)
        modality = modality + self.attn(self.query_norm(modality) + modality_pos, memory, memory)
        return modality + self.drop_path(self.ffn(self.ffn_norm(modality)))


class ModalitySelfAttention(nn.Module):
    """Pre-norm self-attention among the modality tokens; positions on queries and keys."""

    def __init__(self, dim: int, width: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = _BottleneckAttention(dim, width, heads)

    def forward(self, modality: torch.Tensor, modality_pos: torch.Tensor) -> torch.Tensor:
        normed = self.norm(modality)
        positioned = normed + modality_pos
        return modality + self.attn(positioned, positioned, normed)


LayerRunner = Callable[[torch.Tensor, int, int], torch.Tensor]
"""``run(tokens, start, stop)``: the frozen SLFM's ``layers[start:stop]`` on ``tokens`` (with
whatever else its layers need, such as TITAN's attention bias), owned by the encoder."""


class InteractionBlock(nn.Module):
    """Trainable parts of one interaction block; the frozen layers run through the encoder
    (``LayerRunner``) so that they stay owned (and checkpointed) by it."""

    def __init__(
        self,
        dim: int,
        width: int,
        heads: int,
        drop_path: float,
        n_extractors: int,
        modality_self_attention: bool,
    ) -> None:
        super().__init__()
        self.self_attn = ModalitySelfAttention(dim, width, heads) if modality_self_attention else None
        self.injector = Injector(dim, width, heads)
        self.extractors = nn.ModuleList(Extractor(dim, width, heads, drop_path) for _ in range(n_extractors))

    def forward(
        self,
        tokens: torch.Tensor,
        modality: torch.Tensor,
        modality_pos: torch.Tensor,
        run_block: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.self_attn is not None:
            modality = self.self_attn(modality, modality_pos)
        tiles = self.injector(tokens[:, 1:], modality, modality_pos)
        tokens = run_block(torch.cat([tokens[:, :1], tiles], dim=1))
        for extractor in self.extractors:
            modality = extractor(modality, tokens[:, 1:], modality_pos)
        return tokens, modality


class ModalAdapter(nn.Module):
    """All interaction blocks of one model plus the modality positional embedding.

    ``forward`` takes the tokens *after* ``layers[:start]`` (the frozen prefix, which can be
    cached) and runs every remaining frozen layer, interleaved with the blocks.
    """

    def __init__(
        self,
        dim: int,
        layout: Layout,
        n_modality_tokens: int,
        heads: int = 12,
        cffn_ratio: float = 0.25,
        drop_path: float = 0.1,
        extra_extractors: int = 2,
        modality_self_attention: bool = True,
    ) -> None:
        super().__init__()
        if not layout:
            raise InputError("a ModalAdapter needs at least one interaction block; use adapter_depth=0 for none")
        width = int(dim * cffn_ratio)
        if width < 1 or width % heads:
            raise InputError(
                f"adapter_heads={heads} must divide the bottleneck width dim*cffn_ratio = {dim}*{cffn_ratio} = {width}"
            )
        self.layout = layout
        self.modality_pos = nn.Parameter(torch.zeros(n_modality_tokens, dim))
        nn.init.trunc_normal_(self.modality_pos, std=0.02)
        self.blocks = nn.ModuleList(
            InteractionBlock(
                dim,
                width,
                heads,
                drop_path,
                n_extractors=1 + (extra_extractors if i == len(layout) - 1 else 0),
                modality_self_attention=modality_self_attention and i > 0,
            )
            for i in range(len(layout))
        )

    @property
    def start(self) -> int:
        """Index of the first layer an adapter touches: layers before it form the frozen prefix."""
        return self.layout[0][0]

    def forward(
        self, tokens: torch.Tensor, modality: torch.Tensor, run: LayerRunner, depth: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens``: output of ``layers[:start]``, ``[B, 1+N, dim]``; ``modality``: ``[B, M, dim]``;
        ``run`` runs the encoder's frozen layers, ``depth`` of them in all. Returns the output of
        the last frozen layer and the extracted modality tokens."""
        if modality.shape[1] != self.modality_pos.shape[0]:
            raise ValueError(f"expected {self.modality_pos.shape[0]} modality tokens, got {modality.shape[1]}")
        cursor = self.start
        for block, (start, end) in zip(self.blocks, self.layout, strict=True):
            tokens = run(tokens, cursor, start)  # layers between blocks run unchanged
            tokens, modality = block(tokens, modality, self.modality_pos, _layers(run, start, end + 1))
            cursor = end + 1
        return run(tokens, cursor, depth), modality


def _layers(run: LayerRunner, start: int, stop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda tokens: run(tokens, start, stop)
