"""Modal Adapter: layouts, block structure and single residuals."""

from __future__ import annotations

import pytest
import torch

from modaltune.errors import InputError
from modaltune.models import ModalAdapter, resolve_adapter_layout
from modaltune.models.modal_adapter import Extractor, Injector

PAPER_GIGAPATH = ((0, 3), (4, 7), (8, 11))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, PAPER_GIGAPATH),
        ({"depth": 3}, PAPER_GIGAPATH),
        ({"depth": 2}, ((4, 7), (8, 11))),
        ({"depth": 1}, ((8, 11),)),
        ({"depth": 0}, ()),
        ({"depth": 2, "block_size": 2}, ((8, 9), (10, 11))),
        ({"layout": [[0, 3], [4, 7], [8, 11]]}, PAPER_GIGAPATH),
        ({"layout": [[2, 2], [5, 9]]}, ((2, 2), (5, 9))),
        ({"layout": []}, ()),
    ],
)
def test_layout_resolution(kwargs, expected):
    assert resolve_adapter_layout(12, **kwargs) == expected


def test_titan_sized_encoder_gets_the_papers_titan_layout():
    assert resolve_adapter_layout(6) == ((0, 1), (2, 3), (4, 5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": [[0, 3]], "depth": 1}, "not both"),
        ({"layout": [[0, 3], [3, 5]]}, r"adapter_layout\[1\]=\[3, 5\] overlaps"),
        ({"layout": [[4, 7], [0, 3]]}, r"adapter_layout\[1\]=\[0, 3\] overlaps or precedes"),
        ({"layout": [[5, 4]]}, r"adapter_layout\[0\]=\[5, 4\] must satisfy 0 <= start <= end < 12"),
        ({"layout": [[8, 12]]}, "end < 12"),
        ({"layout": [[-1, 2]]}, "0 <= start"),
        ({"layout": [[0, 1, 2]]}, "must be a pair"),
        ({"layout": [[0.0, 1]]}, "must be a pair"),
        ({"layout": ["03"]}, "must be a pair"),
        ({"depth": 4}, "adapter_depth=4 blocks of 4 layers need 16 layers; the encoder has 12"),
        ({"depth": -1}, "non-negative"),
        ({"depth": True}, "non-negative integer"),
        ({"depth": 1, "block_size": 0}, "adapter_block_size must be a positive integer"),
    ],
)
def test_layout_validation_names_the_problem(kwargs, message):
    with pytest.raises(InputError, match=message):
        resolve_adapter_layout(12, **kwargs)


def test_block_structure_follows_the_paper():
    adapter = ModalAdapter(64, ((0, 1), (2, 3), (4, 5)), n_modality_tokens=6, heads=4)
    assert [len(block.extractors) for block in adapter.blocks] == [1, 1, 3]
    assert [block.self_attn is not None for block in adapter.blocks] == [False, True, True]
    assert all(torch.equal(block.injector.gamma, torch.zeros(64)) for block in adapter.blocks)
    assert adapter.blocks[0].injector.attn.q_proj.out_features == 16  # 64 * cffn_ratio 0.25
    plain = ModalAdapter(64, ((0, 1),), n_modality_tokens=6, heads=4, modality_self_attention=False)
    assert plain.blocks[0].self_attn is None and len(plain.blocks[0].extractors) == 3


def test_bottleneck_heads_must_divide_width():
    with pytest.raises(InputError, match=r"adapter_heads=12 must divide the bottleneck width .* = 16"):
        ModalAdapter(64, ((0, 1),), n_modality_tokens=3, heads=12)
    with pytest.raises(InputError, match="adapter_depth=0"):
        ModalAdapter(64, (), n_modality_tokens=3)


def test_sublayers_use_single_residuals():
    tiles, modality, pos = torch.randn(2, 9, 32), torch.randn(2, 3, 32), torch.randn(3, 32)
    injector = Injector(32, 8, 2)
    with torch.no_grad():
        injector.gamma.fill_(1.0)
        injector.attn.out_proj.weight.zero_()
    assert torch.equal(injector(tiles, modality, pos), tiles)
    extractor = Extractor(32, 8, 2, drop_path=0.0)
    with torch.no_grad():
        extractor.attn.out_proj.weight.zero_()
        extractor.ffn[2].weight.zero_()
    assert torch.equal(extractor(modality, tiles, pos), modality)
