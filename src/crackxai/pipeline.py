"""`python -m crackxai.pipeline`: the pipeline tool (crackxai.tools.pipeline)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("pipeline")
