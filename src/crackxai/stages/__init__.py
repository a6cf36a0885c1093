"""DVC stages: orchestration only, one module per stage; each `main(cfg)` returns its metrics.

STAGES is the pipeline's order and the one place the stage names are spelled (dvc.yaml's stages
are checked against it by tests/test_architecture.py). `validate` comes first: it checks params.yaml
before DVC deletes any other stage's outputs.
"""

STAGES = ("validate", "download", "preprocess", "train", "evaluate", "explain")
