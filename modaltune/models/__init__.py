"""Models: a frozen slide-level foundation model, Modal Adapters and modality encoders."""

from modaltune.models.dilated_attention import DilatedSelfAttention, dilated_attention, longnet_segment_lengths
from modaltune.models.encoder_weights import check_encoder_checkpoint, load_slide_encoder
from modaltune.models.frozen_encoder import SLIDE_ENCODER_PRESETS, EncoderConfig, FrozenSlideEncoder
from modaltune.models.modal_adapter import ModalAdapter, resolve_adapter_layout
from modaltune.models.modality_encoders import (
    DEFAULT_TASKS,
    MODALITY_ENCODERS,
    ModalityEncoder,
    RnaPathwayEncoder,
    TaskTokens,
    VectorEncoder,
)
from modaltune.models.modaltune_model import IMAGE, ModalTuneConfig, ModalTuneModel
from modaltune.models.slide_encoder import (
    GIGAPATH_CHECKPOINT_FILENAME,
    GIGAPATH_HUB_ID,
    SlideEncoder,
    SlideEncoderConfig,
    tile_position_index,
)
from modaltune.models.titan import TitanConfig, TitanSlideEncoder

__all__ = [
    "DEFAULT_TASKS",
    "GIGAPATH_CHECKPOINT_FILENAME",
    "GIGAPATH_HUB_ID",
    "IMAGE",
    "MODALITY_ENCODERS",
    "SLIDE_ENCODER_PRESETS",
    "DilatedSelfAttention",
    "EncoderConfig",
    "FrozenSlideEncoder",
    "ModalAdapter",
    "ModalTuneConfig",
    "ModalTuneModel",
    "ModalityEncoder",
    "RnaPathwayEncoder",
    "SlideEncoder",
    "SlideEncoderConfig",
    "TaskTokens",
    "TitanConfig",
    "TitanSlideEncoder",
    "VectorEncoder",
    "check_encoder_checkpoint",
    "dilated_attention",
    "load_slide_encoder",
    "longnet_segment_lengths",
    "resolve_adapter_layout",
    "tile_position_index",
]
