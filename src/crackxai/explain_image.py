"""`python -m crackxai.explain_image`: the explain_image tool (crackxai.tools.explain_image)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("explain_image")
