"""The command line loads the module of the verb given, and only that one."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from scirepo import cli


def verbs_of(parser: argparse.ArgumentParser) -> list[str]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(action.choices)


def test_the_full_parser_has_every_verb_of_the_table_in_its_order():
    assert verbs_of(cli.build_parser()) == list(cli.COMMAND_MODULES)


@pytest.mark.parametrize("verb", list(cli.COMMAND_MODULES))
def test_a_verb_alone_gets_the_verbs_its_module_adds(verb):
    module = cli.COMMAND_MODULES[verb]
    same_module = [v for v, m in cli.COMMAND_MODULES.items() if m == module]
    assert verbs_of(cli.build_parser(verb)) == same_module


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["storage", "transfer", "--db", "x"], "storage"),
        (["--config", "site.yml", "-q", "group", "list"], "group"),
        (["--config=user", "accounts", "list"], "accounts"),
        (["--conf", "user", "images", "build"], "images"),  # an abbreviated option
        (["-q", "backup-host", "create"], "backup-host"),
        (["-h", "storage"], None),  # the top-level help lists every verb
        (["--help"], None),
        ([], None),
        (["--config"], None),  # the full parser reports the missing value
        (["--no-such-option", "user"], "user"),
    ],
)
def test_the_verb_is_found_as_argparse_reads_the_command_line(argv, verb):
    assert cli.wanted_verb(argv) == verb


def test_an_unknown_verb_is_reported_with_the_list_of_all(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err
    for verb in cli.COMMAND_MODULES:
        assert verb in err


def test_one_verb_does_not_import_the_others():
    code = (
        "import sys; from scirepo import cli; cli.build_parser('storage');"
        "print(*sorted(m for m in set(cli.COMMAND_MODULES.values()) if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "scirepo.storage" in loaded
    # What storage needs (users, groups) may come along; the others do not.
    for other in ("scirepo.accounts.cli", "scirepo.local", "scirepo.backup", "scirepo.health",
                  "scirepo.authd", "scirepo.images", "scirepo.deploy"):  # fmt: skip
        assert other not in loaded


@pytest.mark.parametrize(
    ("argv", "site", "command"),
    [
        # The README's example: the user's options belong to the command, not to exec.
        (["local", "exec", "scirepo", "user", "add", "jdoe", "--name", "John Doe",
          "--email", "jdoe@example.org"], "site.yml",
         ["scirepo", "user", "add", "jdoe", "--name", "John Doe", "--email", "jdoe@example.org"]),
        (["local", "exec", "--site", "other.yml", "--", "ls", "-l"], "other.yml", ["ls", "-l"]),
        (["local", "exec", "id"], "site.yml", ["id"]),
    ],
)  # fmt: skip
def test_local_exec_passes_the_command_with_its_own_options(monkeypatch, argv, site, command):
    from scirepo import local

    ran = []
    monkeypatch.setattr(local, "exec_on_host", lambda s, c: ran.append((str(s), c)) or 0)
    args = cli.build_parser("local").parse_args(argv)
    assert args.func(args) == 0
    assert ran == [(site, command)]


@pytest.mark.parametrize("argv", [["local", "exec"], ["local", "exec", "--"]])
def test_local_exec_without_a_command_is_a_usage_error(monkeypatch, capsys, argv):
    from scirepo import local

    monkeypatch.setattr(local, "exec_on_host", lambda s, c: pytest.fail("ran nothing"))
    args = cli.build_parser("local").parse_args(argv)
    with pytest.raises(SystemExit) as exc:
        args.func(args)
    assert exc.value.code == 2
    assert "the command to run is missing" in capsys.readouterr().err
