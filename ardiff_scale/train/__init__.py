"""Training: the optimizer-step loop, its learning-rate schedule, EMA and callbacks."""
