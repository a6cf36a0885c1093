"""`python -m crackxai.train`: the train stage (crackxai.stages.train)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("train")
