"""Training: the DeepSpeed loop, the loss split, checkpoints and metrics."""
