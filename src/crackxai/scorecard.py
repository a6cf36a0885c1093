"""`python -m crackxai.scorecard`: the scorecard tool (crackxai.tools.scorecard)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("scorecard")
