"""`python -m crackxai.inspect`: the inspect tool (crackxai.tools.inspect)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("inspect")
