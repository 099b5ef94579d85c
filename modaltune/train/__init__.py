"""One ModalTune run: typed config, DeepSpeed/DDP engine, the Ray Train worker loop, checkpoints."""
