"""Experiment tracking in MLflow: a non-blocking tracker and the training callback that feeds it."""
