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

# The verbs, in the order `scirepo --help` lists them, and the module that adds each (its
# `register(subparsers)`). A new verb is added here and nowhere else. Only the module of
# the verb given is imported: a command does not pay for the imports of all the others.
COMMAND_MODULES = {
    "config": "scirepo.config",
    "user": "scirepo.users",
    "images": "scirepo.images",
    "local": "scirepo.local",
    "deploy": "scirepo.deploy",
    "health": "scirepo.health",
    "authd": "scirepo.authd",
    "accounts": "scirepo.accounts.cli",
    "backup": "scirepo.backup",
    "restore": "scirepo.backup",
    "backup-host": "scirepo.backup",
    "storage": "scirepo.storage",
    "group": "scirepo.storage.groups",
}


class _NoVerb(Exception):
    pass


class _PreParser(argparse.ArgumentParser):
    def error(self, message):  # a bad command line: the full parser says what is wrong
        raise _NoVerb(message)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="site config: a site file (YAML) or the resolved JSON of `config resolve`",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings")


def wanted_verb(argv: list[str] | None) -> str | None:
    """The verb of command line `argv` (None: sys.argv), or None when there is none or
    the top-level help is asked for."""
    pre = _PreParser(add_help=False)
    _options(pre)
    pre.add_argument("-h", "--help", action="store_true")
    pre.add_argument("verb", nargs="?")
    pre.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        args, _ = pre.parse_known_args(argv)
    except _NoVerb:
        return None
    return None if args.help else args.verb


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser of the `scirepo` command line: with `verb` only, if it is one, else
    with all of them."""
    parser = argparse.ArgumentParser(
        prog="scirepo",
        description="Operate a scirepo science platform host.",
        epilog=f"The site config is --config FILE, else ${CONFIG_ENV}, else {SITE_JSON}.",
    )
    _options(parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    if verb in COMMAND_MODULES:
        modules = [COMMAND_MODULES[verb]]
    else:
        modules = list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in modules:
        importlib.import_module(name).register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(wanted_verb(argv)).parse_args(argv)
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
