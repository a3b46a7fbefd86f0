"""``dpo-lab explain KEY...``: what a config key, a group or a command's config is for.

``dpo-lab explain dpo.beta`` prints one key (type, default, help, how it relates to TRL's default, whether
it may differ inside a pack and which shared artefacts it changes); ``dpo-lab explain dpo`` a group (its
shipped options and one line per key); ``dpo-lab explain`` alone the groups, top-level keys and commands.
``dpo-lab --help KEY`` is the same. ``--markdown`` prints the key tables of docs/configuration.md, and
``--update PAGE`` rewrites them in that page. Imports no training library: it answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_lab.cli.common import exit_with_config_error
from dpo_lab.config.help import (
    GENERATED_END,
    GENERATED_START,
    explain,
    markdown_tables,
    replace_generated_block,
)
from dpo_lab.errors import ConfigError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dpo-lab explain",
        description="What a config key, a config group or a command's config is for, read from the schemas.",
        epilog="e.g. dpo-lab explain dpo.beta | dpo-lab explain dpo | dpo-lab explain generate.prompt",
    )
    parser.add_argument(
        "keys",
        nargs="*",
        metavar="KEY",
        help=(
            "a key (dpo.beta, seed), a group (dpo, eval.checker) or a command's config (generate, "
            "merge.out); none: the groups, top-level keys and commands"
        ),
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the key tables of docs/configuration.md (markdown)"
    )
    parser.add_argument(
        "--update",
        metavar="PAGE",
        type=Path,
        help=f"rewrite the tables of PAGE between {GENERATED_START} and {GENERATED_END}",
    )
    return parser.parse_args(argv)


def update_page(page: Path) -> str:
    """Rewrite the generated tables of ``page``; what changed, in words."""
    if not page.is_file():
        raise ConfigError("--update", f"no such file: {page}")
    text = page.read_text()
    try:
        updated = replace_generated_block(text)
    except ValueError as err:
        raise ConfigError("--update", f"{page}: {err}") from err
    if updated == text:
        return f"{page} is up to date"
    page.write_text(updated)
    return f"{page}: tables updated"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.update is not None:
            print(update_page(args.update))
        elif args.markdown:
            print(markdown_tables(), end="")
        else:
            texts = [explain(key) for key in args.keys] if args.keys else [explain("")]
            print("\n\n".join(texts))
    except ConfigError as err:
        exit_with_config_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
