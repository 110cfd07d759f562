"""Data: tokenizer, objectives (pretraining span denoise, seq2seq), corpus readers."""
