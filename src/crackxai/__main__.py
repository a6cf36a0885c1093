"""`python -m crackxai <stage|tool> [args]`."""

from crackxai.cli import main

main()
