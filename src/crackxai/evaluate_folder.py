"""`python -m crackxai.evaluate_folder`: the evaluate_folder tool (crackxai.tools.evaluate_folder)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("evaluate_folder")
