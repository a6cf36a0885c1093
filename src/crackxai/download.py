"""`python -m crackxai.download`: the download stage (crackxai.stages.download)."""

if __name__ == "__main__":
    from crackxai.cli import run

    run("download")
