"""`python -m crackxai.params`: regenerate params.yaml from conf/ (crackxai.config.params)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("params")
