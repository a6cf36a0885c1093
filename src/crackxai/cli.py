"""The `crackxai` command: `crackxai <stage|tool> [args]`, the same as `python -m crackxai.<name>`.

    crackxai train experiment=smoke           # a stage, Hydra overrides or --params params.yaml
    crackxai explain_image --model m.keras --image photo.jpg

Every command runs inside the one entry-point wrapper (crackxai.core.entry.run_command), entered
before the command's module is imported, so TensorFlow's start-up notices are filtered too.
"""

from __future__ import annotations

import importlib
import sys

from crackxai.config.entry import run_stage
from crackxai.core.entry import run_command
from crackxai.stages import STAGES
from crackxai.tools import TOOLS

USAGE = (f"usage: crackxai <command> [args]\n  stages: {', '.join(STAGES)}\n"
         f"  tools:  {', '.join(TOOLS)}\n`crackxai <command> --help` for a command's options.")


def run(name: str, argv: list[str] | None = None) -> None:
    """Run stage or tool `name` with `argv` (default: the process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if name in STAGES:
        run_stage(name, lambda cfg: importlib.import_module(f"crackxai.stages.{name}").main(cfg),
                  args)
    elif name == "params":  # a tool that lives with the config it writes
        run_command(name, lambda: importlib.import_module("crackxai.config.params").main(args))
    elif name in TOOLS:
        run_command(name, lambda: importlib.import_module(f"crackxai.tools.{name}").main(args))
    else:
        sys.exit(f"crackxai: unknown command {name!r}.\n{USAGE}")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    run(args[0], args[1:])


if __name__ == "__main__":
    main()
