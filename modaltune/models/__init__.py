"""Models: a frozen slide-level foundation model, Modal Adapters and modality encoders."""

from modaltune.models.dilated_attention import DilatedSelfAttention, dilated_attention, longnet_segment_lengths
from modaltune.models.encoder_weights import check_encoder_checkpoint, load_slide_encoder
from modaltune.models.frozen_encoder import SLIDE_ENCODER_PRESETS, EncoderConfig, FrozenSlideEncoder
from modaltune.models.methods import MethodNetwork
from modaltune.models.modal_adapter import ModalAdapter, resolve_adapter_layout
from modaltune.models.modality_encoders import (
    DEFAULT_TASKS,
    IMAGE,
    MODALITY_ENCODERS,
    ModalityEncoder,
    ModalityEncoderEntry,
    PathwayMLPs,
    RnaPathwayEncoder,
    RnaSettings,
    TaskTokens,
    VectorEncoder,
)
from modaltune.models.modaltune_model import TINY_MODEL, ModalTuneConfig, ModalTuneModel
from modaltune.models.model_settings import PAPER_MODEL, ModelSettings, model_settings
from modaltune.models.slide_encoder import (
    GIGAPATH_CHECKPOINT_FILENAME,
    GIGAPATH_HUB_ID,
    SlideEncoder,
    SlideEncoderConfig,
    tile_position_index,
)
from modaltune.models.titan import TitanConfig, TitanSlideEncoder

# What training, evaluation and prediction run: a method on the frozen SLFM (ModalTune, the
# linear probe) or a baseline network; both answer the objectives' cached-prefix calls.
TaskModel = ModalTuneModel | MethodNetwork

__all__ = [
    "DEFAULT_TASKS",
    "GIGAPATH_CHECKPOINT_FILENAME",
    "GIGAPATH_HUB_ID",
    "IMAGE",
    "MODALITY_ENCODERS",
    "PAPER_MODEL",
    "SLIDE_ENCODER_PRESETS",
    "TINY_MODEL",
    "DilatedSelfAttention",
    "EncoderConfig",
    "FrozenSlideEncoder",
    "ModalAdapter",
    "ModalTuneConfig",
    "ModalTuneModel",
    "ModalityEncoder",
    "ModalityEncoderEntry",
    "ModelSettings",
    "PathwayMLPs",
    "RnaPathwayEncoder",
    "RnaSettings",
    "SlideEncoder",
    "SlideEncoderConfig",
    "TaskModel",
    "TaskTokens",
    "TitanConfig",
    "TitanSlideEncoder",
    "VectorEncoder",
    "check_encoder_checkpoint",
    "dilated_attention",
    "load_slide_encoder",
    "longnet_segment_lengths",
    "model_settings",
    "resolve_adapter_layout",
    "tile_position_index",
]
