"""Task specs (what a fine-tuning/evaluation task is, read from eval/tasks/*.yaml) and the readers of its data
formats."""
