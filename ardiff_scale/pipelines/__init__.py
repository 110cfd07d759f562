"""The places that wire parts together: pretraining, fine-tuning, the reproduction and the Ray suite."""
