"""Slide encoder: Prov-GigaPath's positions, checkpoint key names, loading and freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modaltune.errors import InputError
from modaltune.models import SlideEncoder, SlideEncoderConfig, load_slide_encoder, tile_position_index
from modaltune.models.slide_encoder import grid_position_embedding, sincos_table

# Read from prov-gigapath's gigapath/slide_encoder.py (LongNetViT, PatchEmbed) and its vendored
# torchscale (Encoder, EncoderLayer, MultiheadAttention with subln, FeedForwardNetwork).
GIGAPATH_TOP_LEVEL_KEYS = {
    "cls_token",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "encoder.layer_norm.weight",
    "encoder.layer_norm.bias",
    "norm.weight",
    "norm.bias",
}
GIGAPATH_LAYER_KEYS = [
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "self_attn.inner_attn_ln.weight",
    "self_attn.inner_attn_ln.bias",
    "self_attn_layer_norm.weight",
    "self_attn_layer_norm.bias",
    "ffn.fc1.weight",
    "ffn.fc1.bias",
    "ffn.fc2.weight",
    "ffn.fc2.bias",
    "ffn.ffn_layernorm.weight",
    "ffn.ffn_layernorm.bias",
    "final_layer_norm.weight",
    "final_layer_norm.bias",
]
# "Slide encoder param #" printed by prov-gigapath's demo/run_gigapath.ipynb after loading slide_encoder.pth
GIGAPATH_PARAMETERS = 86_330_880


def _inputs(config: SlideEncoderConfig, batch: int = 2, n: int = 41, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, config.in_dim, generator=gen)
    coords = torch.randint(0, 40 * config.tile_size, (batch, n, 2), generator=gen)
    return features, coords


def test_position_index_formula():
    coords = torch.tensor([[[0, 0], [256, 0], [0, 256], [511, 767], [255.9, 1023.0]]])
    assert tile_position_index(coords, 256, 1000).tolist() == [[1, 1001, 2, 1003, 4]]


def test_position_index_spills_y_into_next_row_like_the_reference_and_rejects_outside_grid():
    assert tile_position_index(torch.tensor([[0, 256_000]]), 256, 1000).item() == 1001
    with pytest.raises(InputError, match="1000x1000 grid"):
        tile_position_index(torch.tensor([[256_000, 0]]), 256, 1000)
    with pytest.raises(InputError, match="non-negative"):
        tile_position_index(torch.tensor([[-1, 5]]), 256, 1000)


def _mae_table(dim: int, grid: int) -> np.ndarray:
    """MAE's 2-D sin-cos table with a zero CLS row, built the documented way: meshgrid with
    the column coordinate first, half the channels per axis, ``[sin, cos]`` per half."""

    def one_d(d, positions):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        angles = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    columns, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    table = np.concatenate([one_d(dim // 2, columns), one_d(dim // 2, rows)], axis=1)
    return np.concatenate([np.zeros([1, dim]), table], axis=0).astype(np.float32)


def test_sincos_embedding_equals_the_full_table_row_for_row():
    dim, grid = 16, 7
    index = torch.arange(grid * grid + 1)
    ours = grid_position_embedding(index, sincos_table(grid, dim // 2), grid)
    assert torch.equal(ours, torch.from_numpy(_mae_table(dim, grid)))


def test_sincos_embedding_properties():
    table = sincos_table(1000, 384)
    assert table.shape == (1000, 384) and table.abs().max() <= 1.0
    assert torch.equal(table[0], torch.cat([torch.zeros(192), torch.ones(192)]))  # position 0
    coords = torch.tensor([[[0, 0], [256, 0], [0, 256]]])
    embedding = grid_position_embedding(tile_position_index(coords, 256, 1000), table, 1000)[0]
    assert torch.equal(embedding[0, :384], embedding[1, :384])  # same y: first half equal
    assert torch.equal(embedding[0, 384:], embedding[2, 384:])  # same x: second half equal
    assert not torch.equal(embedding[1], embedding[2])
    assert torch.equal(grid_position_embedding(torch.tensor([0]), table, 1000), torch.zeros(1, 768))


def test_gigapath_preset_matches_the_checkpoint_layout():
    config = SlideEncoderConfig.gigapath()
    assert config.resolved_segment_lengths == (1024, 5792, 32768, 185363, 1048576)
    assert (config.dim, config.depth, config.heads, config.ffn_dim) == (768, 12, 16, 3072)
    with torch.device("meta"):
        encoder = SlideEncoder(config)
    state = encoder.state_dict()
    expected = GIGAPATH_TOP_LEVEL_KEYS | {f"encoder.layers.{i}.{key}" for i in range(12) for key in GIGAPATH_LAYER_KEYS}
    assert set(state) == expected
    assert sum(t.numel() for t in state.values()) == GIGAPATH_PARAMETERS
    assert state["encoder.layers.11.ffn.fc1.weight"].shape == (3072, 768)
    assert state["patch_embed.proj.weight"].shape == (768, 1536)
    assert state["cls_token"].shape == (1, 1, 768)
    assert encoder.norm.eps == 1e-6 and encoder.encoder.layer_norm.eps == 1e-5


@pytest.mark.parametrize("fmt", ["wrapped", "bare", "safetensors"])
def test_checkpoint_round_trip_strict(tmp_path, fmt):
    config = SlideEncoderConfig.tiny()
    original = SlideEncoder(config).eval()
    state = original.state_dict()
    path = tmp_path / ("encoder.safetensors" if fmt == "safetensors" else "slide_encoder.pth")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state} if fmt == "wrapped" else state, path)
    loaded = load_slide_encoder(config, checkpoint=str(path))
    features, coords = _inputs(config)
    assert torch.equal(loaded(features, coords), original(features, coords))
    SlideEncoder(config).load_state_dict(loaded.state_dict(), strict=True)


def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "slide_encoder.pth"
    with pytest.raises(FileNotFoundError, match=str(path)):
        load_slide_encoder(SlideEncoderConfig.tiny(), checkpoint=str(path))


def test_mismatched_checkpoint_raises_naming_path_and_keys(tmp_path):
    config = SlideEncoderConfig.tiny()
    state = SlideEncoder(config).state_dict()
    path = tmp_path / "slide_encoder.pth"
    torch.save({"model": {k: v for k, v in state.items() if k != "norm.bias"}}, path)
    with pytest.raises(InputError, match=rf"{path}.*missing 1 keys \['norm.bias'\]"):
        load_slide_encoder(config, checkpoint=path)
    torch.save({"model": {**state, "pos_embed": torch.zeros(1)}}, path)
    with pytest.raises(InputError, match=r"unexpected 1 keys \['pos_embed'\]"):
        load_slide_encoder(config, checkpoint=path)
    torch.save({"model": SlideEncoder(SlideEncoderConfig.tiny(in_dim=16)).state_dict()}, path)
    with pytest.raises(InputError, match=rf"{path} does not fit the configured shapes"):
        load_slide_encoder(config, checkpoint=path)
    with pytest.raises(InputError, match="not both"):
        load_slide_encoder(config, checkpoint=path, hub_id="prov-gigapath/prov-gigapath")


def test_a_checkpoint_is_checked_without_loading_it_before_any_worker_starts(tmp_path, small_cohort, capsys):
    """``train`` refuses a checkpoint that does not fit the cohort's model (exit 2, one line,
    no run folder); the check itself builds nothing (meta device, memory-mapped read)."""
    from modaltune.cli.main import main
    from modaltune.data import Cohort
    from modaltune.models import check_encoder_checkpoint

    cohort = Cohort(small_cohort)
    fitting = SlideEncoderConfig.tiny(in_dim=cohort.manifest.feature_dim)
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    torch.save({"model": SlideEncoder(fitting).state_dict()}, good)
    torch.save({"model": SlideEncoder(SlideEncoderConfig.tiny(in_dim=cohort.manifest.feature_dim + 1)).state_dict()}, bad)
    check_encoder_checkpoint(fitting, good)
    with pytest.raises(InputError, match=rf"{bad} does not fit the configured shapes: 1 tensor\(s\), e.g. \['patch_embed"):
        check_encoder_checkpoint(fitting, bad)
    capsys.readouterr()
    code = main(["train", "--cohort", str(small_cohort), "--output", str(tmp_path / "run"), "--set", f"model.encoder_checkpoint={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(bad) in err, err
    assert not (tmp_path / "run").exists()


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    config = SlideEncoderConfig.tiny()
    path = tmp_path / "slide_encoder.pth"
    torch.save({"model": SlideEncoder(config).state_dict(), "args": _Args()}, path)
    with pytest.raises(InputError, match=rf"{path} holds pickled objects"):
        load_slide_encoder(config, checkpoint=path)


class _Args:
    """Stands in for the argparse namespaces training scripts often pickle next to weights."""


def test_frozen_encoder_stays_in_eval_mode_without_gradients():
    encoder = load_slide_encoder(SlideEncoderConfig.tiny(dropout=0.25, drop_path_rate=0.1))
    encoder.train()
    assert encoder.frozen and not any(module.training for module in encoder.modules())
    assert not any(param.requires_grad for param in encoder.parameters())
    features, coords = _inputs(encoder.config)
    assert torch.equal(encoder(features, coords), encoder(features, coords))  # dropout stays off


def test_embed_puts_cls_first_and_batch_items_are_independent():
    config = SlideEncoderConfig.tiny()
    encoder = SlideEncoder(config).eval()
    features, coords = _inputs(config, batch=2, n=37)
    tokens = encoder.embed(features, coords)
    assert tokens.shape == (2, 38, config.dim)
    assert torch.equal(tokens[:, 0], encoder.cls_token[0].expand(2, -1))
    torch.testing.assert_close(encoder(features, coords)[1:], encoder(features[1:], coords[1:]))
    with pytest.raises(ValueError, match="coords"):
        encoder.embed(features, coords[..., :1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"heads": 5}, "heads=5 must divide dim=64"),
        ({"segment_lengths": (8, 16)}, "one positive length per dilation ratio"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"depth": 0}, "depth must be >= 1"),
    ],
)
def test_config_validation_names_the_key(overrides, message):
    with pytest.raises(InputError, match=message):
        SlideEncoderConfig.tiny(**overrides)
