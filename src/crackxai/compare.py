"""`python -m crackxai.compare`: the compare tool (crackxai.tools.compare)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("compare")
