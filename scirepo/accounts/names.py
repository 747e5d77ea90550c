"""Usernames made from people's names, and usernames chosen by an administrator.

A signup gives a full name; `choose_username` turns it into a free POSIX username (the
first initial and the last surname word: "Zoë Ødegård" -> "zodegard", then "zodegard2",
...). A name without Latin letters in its surname ("Иван Петров", "王小明") gives no
username: letters of other scripts are dropped, never guessed, and an administrator picks
the name instead (`check_override`). Whether a name is free on the host is the caller's
`is_taken`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable

from scirepo.config import ScirepoError, reserved_reason
from scirepo.users import USERNAME_RE

MAX_USERNAME = 32
# A base leaves room for a numeric suffix of up to three digits ("jdoe999"), and a bit more.
MAX_BASE = 28
MAX_TRIES = 999

# Latin letters that NFKD does not decompose into a base letter and marks.
_LATIN_EXTRA = str.maketrans(
    {
        "ø": "o", "Ø": "O", "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe",
        "Œ": "OE", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D",
        "þ": "th", "Þ": "TH", "ı": "i", "ħ": "h", "Ħ": "H", "ŋ": "n", "Ŋ": "N",
        "ĸ": "k", "ŧ": "t", "Ŧ": "T", "ə": "e", "Ə": "E", "ɛ": "e", "Ɛ": "E",
        "ƒ": "f", "ŀ": "l", "Ŀ": "L", "ɨ": "i", "ʉ": "u", "ɔ": "o", "Ɔ": "O",
    }
)  # fmt: skip

# Words after the surname that are not the surname ("John Smith Jr.").
_SUFFIXES = {"jr", "sr", "ii", "iii", "iv"}


class AccountInputError(ScirepoError):
    """A name, username or signup field cannot be used as given; the message says why,
    in words meant for the person who typed it."""


def transliterate(text: str) -> str:
    """`text` in ASCII: Latin letters lose their diacritics ("Żółć" -> "Zolc", "Ødegård"
    -> "Odegard", "Straße" -> "Strasse"); letters of other scripts and any other
    non-ASCII character are dropped, not guessed. ASCII characters are kept as they are."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LATIN_EXTRA))
    return "".join(c for c in decomposed if c.isascii())


def _word(text: str) -> str:
    """One name word as lowercase [a-z0-9] ("O'Brien" -> "obrien")."""
    return re.sub(r"[^a-z0-9]", "", transliterate(text).lower())


def username_base(full_name: str) -> str:
    """The username a person called `full_name` would like: the first initial of the
    given names plus the last surname word, lowercase ASCII letters and digits, at most
    MAX_BASE characters ("Jean-Luc O'Brien" -> "jobrien"; one word: "Madonna" ->
    "madonna"). Not checked against existing or reserved names: see `choose_username`.

    Leading digits are dropped, so the result always starts with a letter. The initial
    is the first Latin letter of the first given name that has one (none: the surname
    alone). Raises AccountInputError if the surname has no Latin letters.
    """
    if not isinstance(full_name, str) or not full_name.split():
        raise AccountInputError("The name is empty: a username cannot be made from it.")
    words = full_name.split()
    while len(words) > 2 and _word(words[-1]) in _SUFFIXES:
        words.pop()
    surname = _word(words[-1])
    if not re.search(r"[a-z]", surname):
        raise AccountInputError(
            "A username cannot be made from this name: its surname has no Latin letters. "
            "An administrator will choose your username; or give your name in Latin "
            "script as well (for example as in your passport)."
        )
    initial = ""
    for given in words[:-1]:
        letters = re.sub(r"[^a-z]", "", _word(given))
        if letters:
            initial = letters[0]
            break
    base = (initial + surname).lstrip("0123456789")
    return base[:MAX_BASE]


def choose_username(
    full_name: str, is_taken: Callable[[str], bool], reserved: Iterable[str] = ()
) -> str:
    """A free username for `full_name`: its `username_base`, else base2, base3, ...

    A candidate is skipped if `is_taken(candidate)` (an account or group on the host, a
    pending request, ...) or if it is reserved: the built-in reserved names of
    scirepo.config and `reserved` (users.reserved_names and the platform's group names).
    Raises AccountInputError if the name gives no username or all MAX_TRIES candidates
    are taken.
    """
    base = username_base(full_name)
    extra = tuple(reserved)
    for n in range(1, MAX_TRIES + 1):
        candidate = base if n == 1 else f"{base}{n}"
        if reserved_reason(candidate, extra) or is_taken(candidate):
            continue
        if not USERNAME_RE.fullmatch(candidate):  # cannot happen: base is [a-z][a-z0-9]*
            raise AccountInputError(f"Cannot make a valid username from {base!r}.")
        return candidate
    raise AccountInputError(
        f"The usernames {base}, {base}2 ... {base}{MAX_TRIES} are all taken or reserved; "
        "an administrator will choose your username."
    )


def check_override(username: str, reserved: Iterable[str] = ()) -> str:
    """`username` (an administrator's choice) if it may be a platform username: POSIX
    portable (scirepo.users.USERNAME_RE) and not reserved (built-in names and
    `reserved`). Surrounding whitespace is removed. Raises AccountInputError naming the
    problem. Whether the name is taken on the host is checked elsewhere
    (scirepo.users.validate_username)."""
    if not isinstance(username, str) or not username.strip():
        raise AccountInputError("The username is empty.")
    name = username.strip()
    shown = repr(name) if len(name) <= 40 else repr(name[:37] + "...")
    if not USERNAME_RE.fullmatch(name):
        if len(name) > MAX_USERNAME:
            problem = f"is too long ({len(name)} characters, at most {MAX_USERNAME})"
        elif name.lower() != name and USERNAME_RE.fullmatch(name.lower()):
            problem = "has uppercase letters; usernames are all lowercase"
        elif not re.match(r"[a-z_]", name):
            problem = f"starts with {name[0]!r}; it must start with a lowercase letter or _"
        else:
            bad = sorted({c for c in name if not re.match(r"[a-z0-9_-]", c)})
            problem = (
                "may only contain lowercase letters a-z, digits, _ and -; it contains "
                + " ".join(repr(c) for c in bad)
            )
        raise AccountInputError(f"Username {shown} {problem}.")
    reason = reserved_reason(name, tuple(reserved))
    if reason:
        raise AccountInputError(f"Username {shown} is {reason}.")
    return name
