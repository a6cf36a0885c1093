"""`python -m crackxai.validate`: the validate stage (crackxai.stages.validate)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("validate")
