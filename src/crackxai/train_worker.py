"""`python -m crackxai.train_worker`: the train_worker tool (crackxai.tools.train_worker)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("train_worker")
