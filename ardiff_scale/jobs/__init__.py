"""Ray jobs: `ardiff submit` (any ardiff command as a Ray job) and a local head for tests and the demo."""
