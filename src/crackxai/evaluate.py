"""`python -m crackxai.evaluate`: the evaluate stage (crackxai.stages.evaluate)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("evaluate")
