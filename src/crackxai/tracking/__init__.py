"""MLflow tracking: the store, the model's run, provenance tags."""
