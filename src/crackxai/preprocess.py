"""`python -m crackxai.preprocess`: the preprocess stage (crackxai.stages.preprocess)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("preprocess")
