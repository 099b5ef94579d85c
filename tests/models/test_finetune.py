"""The ``finetune`` method: ``linear_probe``'s model with the SLFM's last ``unfrozen_layers``
layers (or all of it) trained, optionally with layer-wise learning-rate decay. Its settings are
the entry's own (refused naming the key), it trains exactly the unfrozen part, its frozen
prefix ends at the first unfrozen layer (and is cached correctly), each layer gets its decayed
rate, and its checkpoint holds the unfrozen layers' weights, as predict rebuilds them.
(It learns a planted subtype through the training loop: tests/train/test_method_learning.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modaltune.data import Cohort
from modaltune.errors import InputError
from modaltune.models import ModalTuneConfig, ModalTuneModel
from modaltune.models.methods import FinetuneSettings
from modaltune.models.titan import TitanConfig
from modaltune.sweeps.factors import FACTORS
from modaltune.text import TextEmbeddingCache, build_label_bank, build_text_encoder
from modaltune.train.config import load_train_config, validate_train_config
from modaltune.train.loop import TrainModule, build_train_module
from modaltune.train.prefix_cache import encoder_fingerprint, open_prefix_cache

FINETUNE = ["model.method=finetune", "model.modalities=[wsi]"]


def _model(encoder: object = None, **settings: object) -> ModalTuneModel:
    overrides: dict[str, object] = {"encoder": encoder} if encoder is not None else {}
    torch.manual_seed(0)
    config = ModalTuneConfig.tiny(method="finetune", modalities=["wsi"], adapter_depth=0, method_settings=settings, **overrides)
    return ModalTuneModel(config)


def _count(params: object) -> int:
    return sum(p.numel() for p in params)  # type: ignore[attr-defined]


def _inputs(model: ModalTuneModel, n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, n, model.config.encoder.in_dim, generator=generator)
    coords = torch.randint(0, 4000, (2, n, 2), generator=generator)
    return features, coords


def test_its_settings_are_its_own_and_read_back_the_same() -> None:
    config = load_train_config(None, [*FINETUNE, "model.method_settings={unfrozen_layers: 2, layer_decay: 0.75}"])
    settings = config.model.method_settings
    assert isinstance(settings, FinetuneSettings) and (settings.unfrozen_layers, settings.layer_decay) == (2, 0.75)
    assert validate_train_config(config.model_dump()) == config  # what a run saves is what predict rebuilds
    default = load_train_config(None, FINETUNE).model.method_settings
    assert isinstance(default, FinetuneSettings) and (default.unfrozen_layers, default.layer_decay) == (None, 1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.method_settings={depth: 2}"], r"method 'finetune': depth: Extra .*\(its settings: \['layer_decay', 'unfrozen_layers'\]\)"),
        (["model.method_settings={unfrozen_layers: 0}"], "method 'finetune': unfrozen_layers: .*greater than or equal to 1"),
        (["model.method_settings={layer_decay: 0}"], "method 'finetune': layer_decay: .*greater than 0"),
        (["model.method_settings={layer_decay: 1.5}"], "method 'finetune': layer_decay: .*less than or equal to 1"),
        (["model.modalities=[wsi, rna]"], "method 'finetune' cannot consume modality 'rna'"),
        (["model.method=linear_probe", "model.method_settings={unfrozen_layers: 2}"], "method 'linear_probe' takes no method_settings"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_train_config(None, [*FINETUNE, *overrides])


def test_more_unfrozen_layers_than_the_encoder_has_are_refused_for_the_cohort(small_cohort: Path) -> None:
    config = load_train_config(None, [*FINETUNE, "model.method_settings={unfrozen_layers: 5}"])
    with pytest.raises(InputError, match="unfrozen_layers=5 exceeds the slide encoder's 4 layers"):
        config.model.for_cohort(Cohort(small_cohort))


def test_the_method_factor_takes_its_settings_and_still_refuses_them_for_the_others() -> None:
    level = FACTORS["method"]("factors.method: level 1", {"name": "finetune", "unfrozen_layers": 2, "layer_decay": 0.5})
    assert level.label == "finetune(unfrozen_layers=2,layer_decay=0.5)"
    assert level.override == {"model": {"method": "finetune", "method_settings": {"unfrozen_layers": 2, "layer_decay": 0.5}}}
    with pytest.raises(InputError, match=r"level 1: method 'finetune': unfrozen_layer: Extra inputs .*its settings"):
        FACTORS["method"]("factors.method: level 1", {"name": "finetune", "unfrozen_layer": 2})
    for name in ("modaltune", "linear_probe"):
        with pytest.raises(InputError, match=f"method '{name}' takes its settings from train.model"):
            FACTORS["method"]("factors.method: level 1", {"name": name, "unfrozen_layers": 2})


def test_it_trains_exactly_the_unfrozen_layers_the_slide_embedding_and_the_heads() -> None:
    new = {"task_tokens", "head_norm", "head"}
    for k in (1, 2, 4, None):
        model = _model(unfrozen_layers=k)
        encoder, depth = model.encoder, model.encoder.depth
        unfrozen = depth if k is None else k
        expected = {id(p) for layer in encoder.layers[depth - unfrozen :] for p in layer.parameters()}
        expected |= {id(p) for p in encoder.pooling_parameters()}  # GigaPath's two final norms: its slide embedding
        expected |= {id(p) for p in encoder.embedding_parameters()} if k is None else set()
        expected |= {id(p) for name, module in model.named_children() if name in new for p in module.parameters()}
        assert {id(p) for p in model.trainable_parameters()} == expected, k
        counts = model.parameter_counts()
        assert counts["trainable"] == _count(model.trainable_parameters()) == counts["encoder"] + counts["task_tokens"] + counts["head"]
        frozen_layers = _count(p for layer in encoder.layers[: depth - unfrozen] for p in layer.parameters())
        assert counts["frozen"] == (0 if k is None else frozen_layers + _count(encoder.embedding_parameters()))
        assert model.adapter is None and not model.modality_encoders
        assert not model.encoder.training and not model.train().encoder.training  # the SLFM's dropout and drop-path stay off


def test_a_titan_finetune_trains_the_pooler_its_slide_embedding_reads_and_not_the_unused_ones() -> None:
    model = _model(TitanConfig.tiny(), unfrozen_layers=1)
    trainable = {name for name, p in model.encoder.named_parameters() if p.requires_grad}
    read = ("blocks.modules_list.5.", "norm.", "attn_pool_contrastive.")  # not attn_pool nor proj, which pool does not read
    assert trainable == {name for name, _ in model.encoder.named_parameters() if name.startswith(read)}
    assert model.prefix_depth == 5
    features, coords = _inputs(model)
    model(features, coords, torch.tensor([0, 1])).sum().backward()
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_the_frozen_prefix_ends_at_the_first_unfrozen_layer_and_gradients_reach_only_what_trains() -> None:
    for k, prefix_depth in ((1, 3), (3, 1), (4, 0), (None, 0)):
        model = _model(unfrozen_layers=k)
        assert model.prefix_depth == prefix_depth
        features, coords = _inputs(model)
        task = torch.tensor([0, 1])
        prefix = model.encode_prefix(features, coords)
        assert prefix.requires_grad == (k is None)  # only a whole-SLFM fine-tune backpropagates into the tile embedding
        out = model.forward_from_prefix(prefix, coords, task)
        torch.testing.assert_close(out, model(features, coords, task))  # forward is the two chained
        out.sum().backward()
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.trainable_parameters()), k
        assert all(p.grad is None for p in model.frozen_parameters())


def test_the_prefix_cache_holds_the_frozen_layers_under_a_fingerprint_of_them_only(tmp_path: Path) -> None:
    model = _model(unfrozen_layers=2)
    cache = open_prefix_cache(True, tmp_path, model, torch.float32, zero_stage=None)
    assert cache is not None
    fingerprint = encoder_fingerprint(model, torch.float32)
    torch.manual_seed(0)
    probe = ModalTuneModel(ModalTuneConfig.tiny(method="linear_probe", modalities=["wsi"], adapter_depth=0))  # the same SLFM
    assert torch.equal(probe.encoder.layers[1].ffn.fc1.weight, model.encoder.layers[1].ffn.fc1.weight)
    assert encoder_fingerprint(probe, torch.float32) != fingerprint  # another prefix depth, another entry
    with torch.no_grad():
        model.encoder.layers[3].ffn.fc1.weight.add_(1.0)  # training moves the unfrozen layers: the prefix is the same
        model.encoder.norm.weight.add_(1.0)
    assert encoder_fingerprint(model, torch.float32) == fingerprint
    with torch.no_grad():
        model.encoder.layers[1].ffn.fc1.weight.add_(1.0)  # another frozen SLFM: another prefix
    assert encoder_fingerprint(model, torch.float32) != fingerprint
    assert open_prefix_cache(True, tmp_path, _model(), torch.float32, zero_stage=None) is None  # every layer trains: nothing frozen


def test_layer_decay_gives_each_layer_its_rate_and_the_default_methods_one_group() -> None:
    lr, decay = 1e-3, 0.5
    model = _model(layer_decay=decay)
    groups = TrainModule(model, nn.Identity()).optimizer_parameters(lr)  # type: ignore[arg-type]
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}  # type: ignore[index]
    encoder, depth = model.encoder, model.encoder.depth
    assert groups[0]["lr"] == lr  # type: ignore[index]  # the run's own rate first: what the run logs
    assert len(rate) == len(model.trainable_parameters())
    for i, layer in enumerate(encoder.layers):
        assert {rate[id(p)] for p in layer.parameters()} == {lr * decay ** (depth - 1 - i)}
    assert {rate[id(p)] for p in encoder.embedding_parameters()} == {lr * decay**depth}
    assert {rate[id(p)] for p in (*encoder.pooling_parameters(), *model.head.parameters(), *model.task_tokens.parameters())} == {lr}
    partial = _model(unfrozen_layers=2, layer_decay=decay)
    assert sorted(set(partial.lr_scales().values())) == [decay]  # layer 3 at the run's rate, layer 2 at decay, 0-1 frozen
    with pytest.raises(InputError, match="method 'finetune' trains no Modal Adapters"):
        ModalTuneConfig.tiny(method="finetune", modalities=["wsi"])  # the tiny model's three adapter blocks
    for plain in (_model(unfrozen_layers=2), ModalTuneModel(ModalTuneConfig.tiny())):
        module = TrainModule(plain, nn.Identity())  # type: ignore[arg-type]
        assert module.optimizer_parameters(lr) == module.trainable_parameters()  # one list, as before: ModalTune unchanged


def test_its_checkpoint_holds_the_unfrozen_layers_and_predict_rebuilds_them(small_cohort: Path, tmp_path: Path) -> None:
    cohort = Cohort(small_cohort)
    encoder = build_text_encoder("onehot", cohort.labels)
    bank = build_label_bank(cohort, encoder, cohort.split(0)[0], out_dim=8, cache=TextEmbeddingCache(tmp_path))
    config = load_train_config(None, [*FINETUNE, "objective=supervised", "model.out_dim=8", "model.method_settings={unfrozen_layers: 1}"])
    module = build_train_module(config, cohort, bank)
    state = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}  # BuiltEngine.trainable_state's keys
    last = f"model.encoder.encoder.layers.{module.model.encoder.depth - 1}."
    assert any(name.startswith(last) for name in state) and "model.encoder.norm.weight" in state
    assert not any(name.startswith("model.encoder.encoder.layers.0.") or "patch_embed" in name for name in state)
    with torch.no_grad():
        for name in state:
            state[name] += 0.5  # trained weights
    rebuilt = build_train_module(validate_train_config(config.model_dump()), cohort, bank)  # as predict_member does
    trainable = {name: p for name, p in rebuilt.named_parameters() if p.requires_grad}
    assert set(trainable) == set(state)
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(state[name])
    assert torch.equal(dict(rebuilt.named_parameters())[f"{last}ffn.fc1.weight"], state[f"{last}ffn.fc1.weight"])
