"""Frozen SLFM weights: a local checkpoint, a hub download, or random weights — for any
architecture (``EncoderConfig.build`` makes the module, the checkpoint must fit it exactly).

A configured checkpoint never falls back to random weights, and ``check_encoder_checkpoint``
does the same key and shape checks on the meta device before any worker starts.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from modaltune.errors import InputError
from modaltune.models.frozen_encoder import EncoderConfig, FrozenSlideEncoder

logger = logging.getLogger(__name__)


def load_slide_encoder(
    config: EncoderConfig,
    checkpoint: str | Path | None = None,
    hub_id: str | None = None,
    *,
    filename: str | None = None,
) -> FrozenSlideEncoder:
    """Build a frozen slide encoder from a local checkpoint, a Hugging Face hub repo, or (when
    neither is given) random weights for tests and demos.

    The checkpoint is Prov-GigaPath's format, ``{"model": state_dict}``, or a bare state dict
    (``.pth`` via ``torch.load(weights_only=True)``, or ``.safetensors``). A configured
    checkpoint never falls back to random weights: a missing file raises ``FileNotFoundError``
    and a key or shape mismatch raises ``InputError`` (a ``ValueError``), both naming the path.
    ``hub_id`` downloads ``filename`` (default: the architecture's ``checkpoint_filename``) with
    ``huggingface_hub`` (Prov-GigaPath's repo is gated: accept its terms and log in first).
    """
    if checkpoint is not None and hub_id is not None:
        raise InputError(f"give a slide encoder checkpoint path or a hub id, not both ({checkpoint!r}, {hub_id!r})")
    encoder = config.build()
    if checkpoint is None and hub_id is None:
        logger.info("no slide encoder checkpoint configured: using randomly initialised weights")
        return encoder.freeze()
    path = Path(checkpoint) if checkpoint is not None else _download(str(hub_id), filename or config.checkpoint_filename)
    if not path.is_file():
        raise FileNotFoundError(f"slide encoder checkpoint not found: {path}")
    state = _encoder_entries(_read_state_dict(path), config.checkpoint_prefix)
    _check_state(path, {name: tuple(t.shape) for name, t in encoder.state_dict().items()}, state)
    encoder.load_state_dict(state, strict=True)
    logger.info("loaded slide encoder weights from %s", path)
    return encoder.freeze()


def _download(hub_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=hub_id, filename=filename))
    except Exception as error:  # network, auth and missing-file errors all mean "no weights"
        raise FileNotFoundError(f"could not fetch {filename} from hub repo {hub_id}: {error}") from error


def check_encoder_checkpoint(config: EncoderConfig, checkpoint: str | Path) -> None:
    """``load_slide_encoder``'s key and shape checks without loading anything: the model on the
    meta device and the checkpoint memory-mapped, so a study or run refuses a checkpoint that
    does not fit before any worker starts (raises ``InputError`` naming the path)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"model.encoder_checkpoint: {path} does not exist")
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in config.build().state_dict().items()}
    _check_state(path, expected, _encoder_entries(_read_state_dict(path, mmap=True), config.checkpoint_prefix))


def _encoder_entries(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The slide encoder's own entries of a checkpoint, without ``prefix`` (TITAN's full checkpoint
    holds ``vision_encoder.*`` and its text tower); a checkpoint with no key under ``prefix`` is
    taken to be the encoder's state dict alone."""
    if not prefix or not any(key.startswith(prefix) for key in state):
        return state
    return {key[len(prefix):]: tensor for key, tensor in state.items() if key.startswith(prefix)}


def _check_state(path: Path, expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"slide encoder checkpoint {path} does not match the configured architecture: "
            f"missing {len(missing)} keys {missing[:8]}, unexpected {len(unexpected)} keys {unexpected[:8]}"
        )
    wrong = [f"{name} {tuple(state[name].shape)} != {shape}" for name, shape in expected.items() if tuple(state[name].shape) != shape]
    if wrong:
        raise InputError(f"slide encoder checkpoint {path} does not fit the configured shapes: {len(wrong)} tensor(s), e.g. {wrong[:3]}")


def _read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"slide encoder checkpoint {path} holds pickled objects besides tensors, which are not loaded for "
            "safety; re-save its state dict from a trusted copy, e.g. "
            "torch.save(torch.load(path, weights_only=False)['model'], new_path)"
        ) from error
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict):
        raise InputError(f"slide encoder checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    return payload
