"""The `scirepo` command line: one verb per module, each added by the module itself.

Every module in `COMMAND_MODULES` exposes `register(subparsers)`, which adds its verb
(an `argparse` subparser) and sets `func` on it; `func(args)` returns the exit code.
Expected errors (`scirepo.config.ScirepoError` and its subclasses, such as ConfigError
and UserError) are printed to stderr without a traceback and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from scirepo.config import CONFIG_ENV, SITE_JSON, ScirepoError

# Modules that add verbs, in the order `scirepo --help` lists them. A new module with a
# `register(subparsers)` function is added here and nowhere else.
COMMAND_MODULES = [
    "scirepo.config",
    "scirepo.users",
    "scirepo.images",
    "scirepo.local",
    "scirepo.deploy",
    "scirepo.health",
    "scirepo.authd",
    "scirepo.accounts.cli",
    "scirepo.backup",
    "scirepo.storage",
    "scirepo.storage.groups",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scirepo",
        description="Operate a scirepo science platform host.",
        epilog=f"The site config is --config FILE, else ${CONFIG_ENV}, else {SITE_JSON}.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="site config: a site file (YAML) or the resolved JSON of `config resolve`",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Modules report what they changed through logging; the CLI shows it on stderr. The
    # handler is removed again so that main() can be called in-process (tests) cleanly.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.func(args) or 0
    except ScirepoError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


if __name__ == "__main__":
    sys.exit(main())
