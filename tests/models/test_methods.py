"""Baseline method networks: the published-size parameter counts written next to each class, the
forward contract with a case that lacks a modality, the modality checks, the attention blocks
against exact attention, and a short optimisation in which each method learns a planted signal
that it should see (tiny sizes, plain torch loops)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from modaltune.errors import InputError
from modaltune.losses import cosine_logits
from modaltune.models.methods import (
    METHOD_NETWORKS,
    Abmil,
    AbmilSettings,
    Mcat,
    McatSettings,
    MethodNetwork,
    NystromAttention,
    Snn,
    SnnSettings,
    SurvPath,
    SurvPathSettings,
    TransMilSettings,
)
from modaltune.models.methods.survpath import PathwayTileAttention

GROUPS = (3, 5, 2, 4)  # RNA genes per pathway
INPUTS = {"rna": GROUPS, "clinical": (6,), "mutations": (8,)}
IN_DIM, OUT_DIM, N_TASKS = 12, 8, 3
TINY = {
    "abmil": AbmilSettings(width=16, attention_dim=8, cat=SnnSettings(width=8)),
    "transmil": TransMilSettings(width=16, heads=2, landmarks=4, cat=SnnSettings(width=8)),
    "snn": SnnSettings(width=16),
    "mcat": McatSettings(width=16, heads=2, feedforward=16),
    "survpath": SurvPathSettings(width=16, readout=8),
}


def _tiny(name: str, modality_inputs: dict[str, tuple[int, ...]]) -> MethodNetwork:
    return METHOD_NETWORKS[name](TINY[name], in_dim=IN_DIM, modality_inputs=modality_inputs, n_tasks=N_TASKS, out_dim=OUT_DIM)


def _used_inputs(name: str) -> dict[str, tuple[int, ...]]:
    """Every case-vector modality the method consumes (the "-cat" form of abmil and transmil)."""
    return {key: segments for key, segments in INPUTS.items() if key in METHOD_NETWORKS[name].consumes}


@pytest.mark.parametrize("name", METHOD_NETWORKS.names())
def test_parameter_count_at_the_published_sizes_is_the_one_written_next_to_the_class(name):
    cls = METHOD_NETWORKS[name]
    published = cls.published
    model = cls(in_dim=published.in_dim, modality_inputs=published.modality_inputs, n_tasks=2, out_dim=256)
    counts = model.parameter_counts()
    assert counts["trainable"] - counts["heads"] == published.parameters
    assert counts["heads"] == 2 * (256 * model.heads.weight.shape[-1] + 256) and counts["frozen"] == 0
    assert counts["trainable"] == sum(value for key, value in counts.items() if key not in ("trainable", "frozen"))


@pytest.mark.parametrize("name", METHOD_NETWORKS.names())
def test_forward_shapes_and_a_case_without_a_modality(name):
    """One embedding per (case, task) row; a NaN row (the case lacks RNA, or mutations) gives a
    finite output and finite gradients, the rows without NaN are unchanged by it, and the task
    ids select different embeddings of the same case."""
    torch.manual_seed(0)
    model = _tiny(name, _used_inputs(name)).eval()
    gen = torch.Generator().manual_seed(1)
    features, coords = torch.randn(4, 11, IN_DIM, generator=gen), torch.randint(0, 9000, (4, 11, 2), generator=gen)
    inputs = {key: torch.randn(4, sum(segments), generator=gen) for key, segments in model.modality_inputs.items()}
    task = torch.tensor([0, 1, 2, 0])
    complete = model(features, coords, task, inputs)
    assert complete.shape == (4, OUT_DIM)
    assert not torch.allclose(complete[0], model(features[:1], coords[:1], task[1:2], {k: v[:1] for k, v in inputs.items()})[0])
    for key in set(inputs) & {"rna", "mutations"}:
        inputs[key][1] = float("nan")
    output = model(features, coords, task, inputs)
    assert torch.isfinite(output).all()
    torch.testing.assert_close(output[[0, 2, 3]], complete[[0, 2, 3]])
    model.train()(features, coords, task, inputs).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_modalities_a_method_cannot_take_or_needs_are_refused_naming_both():
    with pytest.raises(InputError, match=r"method 'survpath' requires modality 'rna'"):
        SurvPath(in_dim=8, modality_inputs={"clinical": (6,)}, n_tasks=2, out_dim=4)
    vectors = r"\['clinical', 'mutations', 'rna'\]"
    with pytest.raises(InputError, match=rf"method 'abmil' cannot consume modality 'wsi'; its case-vector modalities are {vectors}"):
        Abmil(in_dim=8, modality_inputs={"wsi": (8,)}, n_tasks=2, out_dim=4)
    with pytest.raises(InputError, match=r"method 'snn' needs at least one of the modalities"):
        Snn(in_dim=8, modality_inputs={}, n_tasks=2, out_dim=4)
    with pytest.raises(InputError, match=r"modality 'rna' needs positive segment sizes"):
        Mcat(in_dim=8, modality_inputs={"rna": (3, 0)}, n_tasks=2, out_dim=4)
    with pytest.raises(ValidationError, match="landmark"):
        TransMilSettings(landmark=4)  # a typo is an error, never a silent default
    with pytest.raises(ValueError, match="inputs has no 'rna'"):
        _tiny("snn", {"rna": GROUPS})(torch.randn(1, 3, IN_DIM), torch.zeros(1, 3, 2), torch.tensor([0]), {})
    with pytest.raises(ValueError, match=r"task ids must be in \[0, 3\)"):
        _tiny("abmil", {})(torch.randn(1, 3, IN_DIM), torch.zeros(1, 3, 2), torch.tensor([3]))


def test_nystrom_attention_with_a_landmark_per_token_is_exact_attention():
    """With as many landmarks as tokens the landmark kernel is the full softmax kernel, so
    kernel @ pinv(kernel) @ kernel @ V must equal softmax(QK^T/sqrt(d)) V (plus the value conv)."""
    torch.manual_seed(0)
    attention = NystromAttention(dim=8, heads=2, landmarks=6, pinv_iterations=30, residual_kernel=3, dropout=0.0)
    tokens = torch.randn(2, 6, 8)
    q, k, v = attention.qkv(tokens).reshape(2, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    exact = F.scaled_dot_product_attention(q, k, v) + attention.value_conv(v)
    expected = attention.out(exact.transpose(1, 2).reshape(2, 6, 8))
    torch.testing.assert_close(attention(tokens), expected, rtol=1e-3, atol=1e-4)


def test_nystrom_attention_of_a_case_does_not_depend_on_the_other_cases_of_its_batch():
    """The pseudo-inverse starts from each landmark kernel's own norms (the reference takes one
    maximum over the batch, which makes a case's embedding depend on its batch-mates)."""
    torch.manual_seed(0)
    attention = NystromAttention(dim=8, heads=2, landmarks=3, pinv_iterations=6, residual_kernel=3, dropout=0.0)
    tokens = torch.randn(3, 10, 8)
    tokens[1:] *= 5  # batch-mates with sharper attention kernels
    torch.testing.assert_close(attention(tokens)[:1], attention(tokens[:1]))


def test_survpath_attention_is_full_attention_under_its_mask():
    """Pathways attend to every token, tiles to the pathways only: the same as full attention
    with the tile<->tile block masked out."""
    torch.manual_seed(0)
    attention = PathwayTileAttention(dim=8, attention_dim=6)
    pathways, tiles = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    q, k, v = attention.qkv(attention.norm(torch.cat([pathways, tiles], dim=1))).chunk(3, dim=-1)
    allowed = torch.ones(8, 8, dtype=torch.bool)
    allowed[3:, 3:] = False
    torch.testing.assert_close(attention(pathways, tiles), F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))


# --- learning a planted signal ----------------------------------------------------------------

N_TRAIN, N_TEST = 480, 96  # TransMIL memorises 160 bags by its position-dependent convolutions
Batch = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]


def _fit_and_score(model: MethodNetwork, data: Batch, steps: int, lr: float = 5e-3) -> float:
    """Adam on the supervised objective's class head (scaled cosine to fixed class anchors) for
    ``steps`` batches of 32 training cases, all on task 1; held-out accuracy."""
    features, coords, inputs, labels = data
    anchors = torch.randn(2, OUT_DIM, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(4)

    def logits(rows: torch.Tensor) -> torch.Tensor:
        task = torch.ones(len(rows), dtype=torch.long)
        return cosine_logits(model(features[rows], coords[rows], task, {k: v[rows] for k, v in inputs.items()}), anchors, 10.0)

    model.train()
    for _ in range(steps):
        rows = torch.randint(0, N_TRAIN, (32,), generator=gen)
        loss = F.cross_entropy(logits(rows), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        test = torch.arange(N_TRAIN, N_TRAIN + N_TEST)
        return float((logits(test).argmax(dim=1) == labels[test]).float().mean())


def _cases(n_tiles: int, in_dim: int, modality_inputs: dict[str, tuple[int, ...]], seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    n = N_TRAIN + N_TEST
    features = torch.randn(n, n_tiles, in_dim, generator=gen)
    coords = torch.randint(0, 9000, (n, n_tiles, 2), generator=gen)
    inputs = {key: torch.randn(n, sum(segments), generator=gen) for key, segments in modality_inputs.items()}
    labels = torch.arange(n) % 2
    return features, coords, inputs, labels


def _few_tiles_signal(seed: int) -> Batch:
    """A label carried by 2 of 32 tiles: in a positive bag two tiles sit at 4 on one feature
    (noise SD 1). The bag's mean feature moves by only 0.25 against an SD of 0.18 across bags:
    the best rule on the mean scores about 0.76, so 0.85 needs the method to find the tiles."""
    features, coords, inputs, labels = _cases(32, IN_DIM, {}, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for case in torch.nonzero(labels).flatten():
        features[case, torch.randperm(32, generator=gen)[:2], 0] = 4.0
    return features, coords, inputs, labels


def _rna_signal(modality_inputs: dict[str, tuple[int, ...]], n_tiles: int, seed: int) -> Batch:
    """A label in one pathway (the third: genes 8 and 9): the sign of their sum, every other
    gene, modality and tile noise; a fifth of the training cases lack mutations."""
    features, coords, inputs, _ = _cases(n_tiles, IN_DIM, modality_inputs, seed)
    labels = (inputs["rna"][:, 8] + inputs["rna"][:, 9] > 0).long()
    if "mutations" in inputs:
        inputs["mutations"] = (inputs["mutations"] > 1).float()
        inputs["mutations"][: N_TRAIN : 5] = float("nan")
    return features, coords, inputs, labels


CASES: dict[str, tuple[Callable[[int], Batch], Callable[[], MethodNetwork], int]] = {
    # method: (data for a seed, model, optimisation steps)
    "abmil": (_few_tiles_signal, lambda: _tiny("abmil", {}), 100),
    "transmil": (_few_tiles_signal, lambda: _tiny("transmil", {}), 250),
    "abmil-cat": (lambda seed: _rna_signal({"rna": GROUPS}, 8, seed), lambda: _tiny("abmil", {"rna": GROUPS}), 200),
    "snn": (
        lambda seed: _rna_signal({"rna": GROUPS, "mutations": (8,)}, 2, seed),
        lambda: _tiny("snn", {"rna": GROUPS, "mutations": (8,)}),
        150,
    ),
    "mcat": (lambda seed: _rna_signal({"rna": GROUPS}, 8, seed), lambda: _tiny("mcat", {"rna": GROUPS}), 60),
    "survpath": (
        lambda seed: _rna_signal({"rna": GROUPS, "mutations": (8,)}, 8, seed),
        lambda: _tiny("survpath", {"rna": GROUPS, "mutations": (8,)}),
        120,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_method_learns_a_planted_signal_it_should_see(case):
    """Held-out accuracy on 96 cases after a short optimisation. By chance (accuracy 0.5) a
    score of 0.85 or more has probability below 1e-11."""
    make_data, make_model, steps = CASES[case]
    torch.manual_seed(0)
    data, model = make_data(10), make_model()
    accuracy = _fit_and_score(model, data, steps)
    assert accuracy >= 0.85, f"{case}: held-out accuracy {accuracy:.2f} after {steps} steps"
