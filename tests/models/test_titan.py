"""TITAN's slide encoder: the public checkpoint's names and shapes, a strict load from its
full-model layout, the 2-D ALiBi bias, attention against a naive reference, and a ModalTune
model on it (TITAN's adapter layout, zero-init equivalence, the cached-prefix path)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from modaltune.errors import InputError
from modaltune.models import ModalTuneConfig, ModalTuneModel, TitanConfig, check_encoder_checkpoint, load_slide_encoder
from modaltune.models.titan import alibi_slopes, grid_alibi_bias

BLOCK_KEYS = {
    "norm1.weight": (768,), "norm1.bias": (768,), "attn.qkv.weight": (2304, 768), "attn.qkv.bias": (2304,),
    "attn.proj.weight": (768, 768), "attn.proj.bias": (768,), "norm2.weight": (768,), "norm2.bias": (768,),
    "mlp.fc1.weight": (3072, 768), "mlp.fc1.bias": (3072,), "mlp.fc2.weight": (768, 3072), "mlp.fc2.bias": (768,),
}


def _pooler_keys(name: str, queries: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{name}.query": (queries, 768), f"{name}.attn.in_proj_weight": (2304, 768), f"{name}.attn.in_proj_bias": (2304,),
        f"{name}.attn.out_proj.weight": (768, 768), f"{name}.attn.out_proj.bias": (768,),
        f"{name}.ln_q.weight": (768,), f"{name}.ln_q.bias": (768,), f"{name}.ln_k.weight": (768,), f"{name}.ln_k.bias": (768,),
    }


PUBLIC_KEYS = {
    "cls_token": (1, 1, 768), "proj": (768, 768), "patch_embed.0.weight": (768, 768), "patch_embed.0.bias": (768,),
    "norm.weight": (768,), "norm.bias": (768,),
    **{f"blocks.modules_list.{i}.{key}": shape for i in range(6) for key, shape in BLOCK_KEYS.items()},
    **_pooler_keys("attn_pool", 128), **_pooler_keys("attn_pool_contrastive", 1),
}


def _tiles(n: int = 23, batch: int = 2, in_dim: int = 32, tile: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cells = torch.stack([torch.randperm(60, generator=gen)[:n] for _ in range(batch)])  # distinct cells of a 6 x 10 grid
    coords = torch.stack([cells // 10, cells % 10], dim=-1) * tile + 3 * tile
    return torch.randn(batch, n, in_dim, generator=gen), coords


def test_the_default_encoder_has_the_public_checkpoints_names_and_shapes() -> None:
    with torch.device("meta"):
        state = TitanConfig.titan().build().state_dict()
    assert {name: tuple(t.shape) for name, t in state.items()} == PUBLIC_KEYS
    assert sum(t.numel() for t in state.values()) == 48_539_904


def test_a_full_titan_checkpoint_loads_strictly_and_a_mismatched_one_is_refused(tmp_path) -> None:
    """Written as the hub's ``model.safetensors`` is laid out: the slide encoder under
    ``vision_encoder.`` next to the text tower, which is left out."""
    config = TitanConfig.tiny()
    torch.manual_seed(3)
    original = config.build().eval()
    path = tmp_path / "model.safetensors"
    full = {f"vision_encoder.{k}": v.contiguous() for k, v in original.state_dict().items()}
    save_file(full | {"text_encoder.token_embedding.weight": torch.zeros(4, 8)}, str(path))
    check_encoder_checkpoint(config, path)
    loaded = load_slide_encoder(config, checkpoint=path)
    features, coords = _tiles()
    # (equal to rounding: frozen, the pooler takes torch's fused attention path)
    torch.testing.assert_close(loaded(features, coords), original(features, coords), rtol=0, atol=1e-6)
    assert loaded.frozen and not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(InputError, match=rf"{path} does not fit the configured shapes"):
        check_encoder_checkpoint(TitanConfig.tiny(in_dim=16), path)


def test_the_alibi_bias_is_minus_slope_times_the_euclidean_cell_distance_and_zero_for_cls() -> None:
    slopes = alibi_slopes(12)
    assert slopes[:8].tolist() == [2.0**-k for k in range(1, 9)]
    torch.testing.assert_close(slopes[8:], torch.tensor([2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5], dtype=torch.float64))
    coords = torch.tensor([[[1024, 2048], [1024 + 3 * 512, 2048 + 4 * 512], [1024, 2048 + 512]]])
    bias = grid_alibi_bias(coords, tile_size=512, heads=12)
    assert bias.shape == (1, 12, 4, 4)
    assert torch.all(bias[:, :, 0] == 0) and torch.all(bias[:, :, :, 0] == 0)
    torch.testing.assert_close(bias[0, :, 1, 2], (-5 * slopes).float())  # a 3-4-5 triangle in cells
    torch.testing.assert_close(bias[0, :, 1, 3], (-1 * slopes).float())
    # The same slide at 40x (1024 level-0 px per 512-px tile at 20x) has the same grid.
    assert torch.equal(grid_alibi_bias(coords * 2, tile_size=1024, heads=12), bias)


def test_a_block_attends_as_a_naive_biased_softmax_would() -> None:
    torch.manual_seed(0)
    encoder = TitanConfig.tiny().build().double()
    features, coords = _tiles()
    tokens = encoder.embed(features.double(), coords)
    bias = encoder.layer_context(coords).double()
    block = encoder.layers[0]
    x = block.norm1(tokens)
    batch, length, dim = x.shape
    heads = encoder.config.heads
    q, k, v = block.attn.qkv(x).view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5 + bias, dim=-1)
    attended = block.attn.proj((weights @ v).transpose(1, 2).reshape(batch, length, dim))
    expected = tokens + attended
    expected = expected + block.mlp(block.norm2(expected))
    torch.testing.assert_close(encoder.apply_layer(block, tokens, bias), expected)


def test_the_slide_embedding_does_not_depend_on_the_order_of_the_tiles() -> None:
    torch.manual_seed(0)
    encoder = TitanConfig.tiny().build().double().eval()
    features, coords = _tiles(batch=1)
    order = torch.randperm(features.shape[1])
    torch.testing.assert_close(encoder(features.double(), coords), encoder(features[:, order].double(), coords[:, order]))


def _titan_model(**overrides: object) -> ModalTuneModel:
    torch.manual_seed(0)
    return ModalTuneModel(ModalTuneConfig.tiny(encoder=TitanConfig.tiny(), **overrides))


def _case(config: ModalTuneConfig, batch: int = 2) -> dict:
    features, coords = _tiles(batch=batch)
    gen = torch.Generator().manual_seed(1)
    return {
        "features": features, "coords": coords, "task": torch.arange(batch) % config.n_tasks,
        "inputs": {name: torch.randn(batch, sum(segments), generator=gen) for name, segments in config.modality_inputs.items()},
    }


def test_a_modaltune_model_on_titan_has_titans_adapter_layout_and_starts_as_the_frozen_slfm() -> None:
    model = _titan_model().train()
    assert model.config.layout == ((0, 1), (2, 3), (4, 5)) and model.prefix_depth == 0
    inputs = _case(model.config)
    prefix = model.encode_prefix(inputs["features"], inputs["coords"])
    slide, modality = model.interact(prefix, inputs["coords"], inputs["task"], inputs["inputs"])
    torch.testing.assert_close(slide, model.encoder(inputs["features"], inputs["coords"]), rtol=0, atol=1e-6)
    assert modality.shape == (2, model.config.n_modality_tokens, 64)
    loss = model(**inputs).square().sum()
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.adapter.blocks[0].injector.attn.q_proj.weight.grad is not None


@pytest.mark.parametrize("adapter_depth", [0, 1, 3])
def test_the_cached_prefix_path_equals_the_full_forward_on_titan(adapter_depth: int) -> None:
    model = _titan_model(adapter_depth=adapter_depth).eval()
    inputs = _case(model.config)
    prefix = model.encode_prefix(inputs["features"], inputs["coords"])
    assert model.prefix_depth == 6 - 2 * adapter_depth
    cached = model.forward_from_prefix(prefix.clone(), inputs["coords"], inputs["task"], inputs["inputs"])
    assert torch.equal(cached, model(**inputs))
