"""`python -m crackxai.explain`: the explain stage (crackxai.stages.explain)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("explain")
