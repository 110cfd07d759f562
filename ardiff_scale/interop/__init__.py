"""Other implementations' checkpoints and formats, read into ardiff-scale models."""
