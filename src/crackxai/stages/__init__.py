"""DVC stages: orchestration only, one module per stage; each `main(cfg)` returns its metrics.

STAGES is the pipeline's order and the one place the stage names are spelled (dvc.yaml's stages
are checked against it by tests/test_architecture.py).
"""

STAGES = ("download", "preprocess", "train", "evaluate", "explain")
