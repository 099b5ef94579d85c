"""ModalTune: multi-modal fine-tuning of frozen slide-level foundation models, swept at scale."""

__version__ = "0.1.0"
