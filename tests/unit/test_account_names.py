"""Usernames from full names (scirepo.accounts.names)."""

from __future__ import annotations

import pytest

from scirepo.accounts.names import (
    AccountInputError,
    check_override,
    choose_username,
    transliterate,
    username_base,
)
from scirepo.users import USERNAME_RE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Nicolò", "Nicolo"),
        ("Zoë Ødegård", "Zoe Odegard"),
        ("Łukasz Żółć", "Lukasz Zolc"),
        ("Straße", "Strasse"),
        ("Æsa Œuvre", "AEsa OEuvre"),
        ("Þór Ðað", "THor Dad"),
        ("Đorđe", "Dorde"),
        ("Yıldız", "Yildiz"),
        ("Ħal ŋa", "Hal na"),
        ("François Müller-Lüdenscheidt", "Francois Muller-Ludenscheidt"),
        ("Nguyễn Thị Minh Khai", "Nguyen Thi Minh Khai"),
        ("Иван Петров", " "),  # other scripts are dropped, not guessed
        ("王小明", ""),
        ("O'Brien; rm -rf /", "O'Brien; rm -rf /"),  # ASCII stays as it is
    ],
)
def test_transliterate(text, expected):
    assert transliterate(text) == expected


@pytest.mark.parametrize(
    ("full_name", "expected"),
    [
        ("John Doe", "jdoe"),
        ("Nicolò Sorrentino", "nsorrentino"),
        ("Jean-Luc O'Brien", "jobrien"),
        ("Zoë Ødegård", "zodegard"),
        ("  anna   maria   schmidt ", "aschmidt"),
        ("Łukasz Żółć", "lzolc"),
        ("Madonna", "madonna"),
        ("Ludwig van Beethoven", "lbeethoven"),
        ("Anne-Marie Smith-Jones", "asmithjones"),
        ("Martin Luther King Jr.", "mking"),
        ("Henry Ford III", "hford"),
        ("李 Smith", "smith"),  # a given name without Latin letters: no initial
        ("Иван Smith", "smith"),
        ("John O’Connor", "joconnor"),
        ("Bob\tMüller", "bmuller"),
        ("José Ángel Sánchez-Vicario", "jsanchezvicario"),
        # A leading digit is dropped: usernames start with a letter.
        ("2Pac", "pac"),
        ("7 Smith", "smith"),
        ("Agent 007bond", "a007bond"),
        ("A " + "b" * 40, "a" + "b" * 27),
    ],
)
def test_username_base(full_name, expected):
    base = username_base(full_name)
    assert base == expected
    assert USERNAME_RE.fullmatch(base)
    assert len(base) <= 28


@pytest.mark.parametrize("full_name", ["Иван Петров", "王小明", "John 李", "Jane 42", "", "   "])
def test_username_base_without_latin_surname(full_name):
    with pytest.raises(AccountInputError) as exc:
        username_base(full_name)
    if full_name.strip():
        assert "Latin" in str(exc.value)
        assert "administrator will choose" in str(exc.value)


def test_choose_username_first_free():
    taken = {"jdoe", "jdoe2"}
    assert choose_username("John Doe", taken.__contains__) == "jdoe3"
    assert choose_username("Jane Roe", taken.__contains__) == "jroe"


def test_choose_username_skips_reserved():
    never = lambda name: False  # noqa: E731
    assert choose_username("Admin", never) == "admin2"  # built-in reserved name
    assert choose_username("Scirepo", never) == "scirepo2"
    assert choose_username("S Ciuser", never, reserved=["sciuser"]) == "sciuser2"
    # Platform groups are passed in `reserved` too; a generator is fine.
    groups = (g for g in ["dmanagers", "dmanagers2"])
    assert choose_username("D Managers", never, reserved=groups) == "dmanagers3"


def test_choose_username_long_name_fits():
    taken = {"a" + "b" * 27} | {f"a{'b' * 27}{n}" for n in range(2, 999)}
    name = choose_username("A " + "b" * 60, taken.__contains__)
    assert name == "a" + "b" * 27 + "999"
    assert len(name) <= 32 and USERNAME_RE.fullmatch(name)


def test_choose_username_gives_up():
    calls = []

    def taken(name):
        calls.append(name)
        return True

    with pytest.raises(AccountInputError, match="administrator"):
        choose_username("John Doe", taken)
    assert len(calls) == 999
    assert calls[0] == "jdoe" and calls[1] == "jdoe2" and calls[-1] == "jdoe999"


def test_choose_username_no_latin():
    with pytest.raises(AccountInputError, match="Latin"):
        choose_username("Иван Петров", lambda name: False)


@pytest.mark.parametrize("name", ["jdoe", "_svc", "a", "data-mgr_2", "a" * 32, " jdoe ", "jdoe\n"])
def test_check_override_ok(name):
    assert check_override(name) == name.strip()


@pytest.mark.parametrize(
    ("name", "reserved", "problem"),
    [
        ("", (), "empty"),
        ("   ", (), "empty"),
        ("a" * 33, (), "too long (33 characters, at most 32)"),
        ("JDoe", (), "uppercase"),
        ("2pac", (), "must start with a lowercase letter"),
        ("-x", (), "must start with a lowercase letter"),
        ("j doe", (), "' '"),
        ("jdoe;rm", (), "';'"),
        ("jdoe$", (), "'$'"),
        ("jöe", (), "'ö'"),
        ("j.doe", (), "'.'"),
        ("'; DROP TABLE requests; --", (), "must start with"),
        ("root", (), "reserved name (system or platform account)"),
        ("systemd-foo", (), "reserved"),
        ("scirepo-admin", (), "reserved"),
        ("alice", ("alice",), "reserved name (users.reserved_names)"),
    ],
)
def test_check_override_refused(name, reserved, problem):
    with pytest.raises(AccountInputError) as exc:
        check_override(name, reserved)
    assert problem in str(exc.value)


def test_check_override_nul():
    with pytest.raises(AccountInputError, match="'\\\\x00'"):
        check_override("jdoe\x00x")
