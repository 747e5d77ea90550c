"""Validation of the account signup form.

`validate_signup` checks every field of a submitted form and returns the cleaned values
with one plain-language message per wrong field, ready to show next to the field. Text
is only text here: quotes, semicolons or `$(...)` in an institution or purpose are kept
as typed (the caller stores them with parameterised SQL and never hands them to a shell);
only the full name, which becomes a GECOS field and a username, is held to the
characters names are written with.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import subprocess
import tempfile
import unicodedata
from collections.abc import Mapping

from scirepo.accounts.names import AccountInputError, username_base
from scirepo.config import ScirepoError
from scirepo.users import EMAIL_RE, UserError, clean_gecos_field

__all__ = ["AccountInputError", "validate_signup"]

LABELS = {
    "full_name": "Full name",
    "email": "Email address",
    "institution": "Institution",
    "purpose": "Purpose",
    "ssh_key": "SSH public key",
}
# (minimum, maximum) length in characters, after stripping.
LIMITS = {
    "full_name": (2, 100),
    "email": (3, 254),
    "institution": (2, 200),
    "purpose": (10, 2000),
    "ssh_key": (1, 16 * 1024),
}
POLICY_YES = {"on", "yes", "1", "true"}
# Public key types accepted, and how `ssh-keygen -l` names each.
SSH_KEY_TYPES = {
    "ssh-ed25519": "ED25519",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "sk-ssh-ed25519@openssh.com": "ED25519-SK",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
    "ssh-rsa": "RSA",
}
MIN_RSA_BITS = 3072
SSH_KEYGEN_TIMEOUT = 10

# Bidirectional embeddings, overrides and isolates: invisible, and they make text read
# differently from what it is.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAME_PUNCT = set(" '\u2019.-\u2010")  # space, apostrophes, period, hyphens
_NAME_JOINERS = {"\u200c", "\u200d"}  # ZWNJ, ZWJ: part of writing some names
_ATEXT = set("!#$%&'*+-/=?^_`{|}~")
_DOMAIN_LABEL = re.compile(r"^[^\W_](?:(?:[^\W_]|-)*[^\W_])?$")


class _Invalid(Exception):
    """A field is wrong; the message is shown to the user as it is."""


def _count(n: int, what: str = "character") -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _check_controls(label: str, value: str, allow: str = "") -> None:
    for c in value:
        if c in allow:
            continue
        cat = unicodedata.category(c)
        if cat == "Cc" or cat == "Cs" or c in _BIDI:
            if c == "\0":
                what = "a NUL character"
            elif c in "\r\n":
                what = "a line break"
            else:
                what = f"an invisible control character (U+{ord(c):04X})"
            raise _Invalid(f"{label} contains {what}; remove it.")


def _check_length(label: str, value: str, lo: int, hi: int) -> None:
    if len(value) > hi:
        raise _Invalid(f"{label} is too long ({_count(len(value))}, at most {hi}).")
    if len(value) < lo:
        raise _Invalid(f"{label} is too short ({_count(len(value))}, at least {lo}).")


def _text(field: str, raw: str, *, multiline: bool = False) -> str:
    """`raw` with control characters refused, whitespace stripped (and, on one line,
    runs of whitespace made one space), and length checked: the steps every field
    takes before anything else."""
    label = LABELS[field]
    lo, hi = LIMITS[field]
    if len(raw) > 4 * hi + 1024:  # not even worth scanning
        raise _Invalid(f"{label} is too long ({_count(len(raw))}, at most {hi}).")
    if multiline:
        raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    # Surrounding whitespace, a pasted line's newline included, is dropped first.
    raw = raw.replace("\t", " ").strip(" \r\n")
    _check_controls(label, raw, allow="\n" if multiline else "")
    if multiline:
        value = "\n".join(line.rstrip() for line in raw.strip().split("\n"))
    else:
        value = " ".join(raw.split())
    if not value and lo:
        raise _Invalid(f"{label} is required.")
    _check_length(label, value, lo, hi)
    return value


def _full_name(raw: str) -> str:
    label = LABELS["full_name"]
    value = unicodedata.normalize("NFC", _text("full_name", raw))
    try:
        value = clean_gecos_field(value, label)  # commas and colons become spaces
    except UserError as exc:  # a control character: _text refused those already
        raise _Invalid(str(exc)) from None
    bad = []
    for c in value:
        if c in _NAME_PUNCT or c in _NAME_JOINERS or unicodedata.category(c)[0] in "LM":
            continue
        if c not in bad:
            bad.append(c)
    if bad:
        shown = " ".join(f"“{c}”" for c in bad[:5])
        raise _Invalid(
            f"{label} may only contain letters, spaces, apostrophes, hyphens and periods; "
            f"remove {shown}."
        )
    if not any(unicodedata.category(c)[0] == "L" for c in value):
        raise _Invalid(f"{label} must contain letters.")
    _check_length(label, value, *LIMITS["full_name"])
    return value


def _email(raw: str) -> str:
    label = LABELS["email"]
    value = _text("email", raw)
    if any(c.isspace() for c in value):
        raise _Invalid(f"{label} must not contain spaces.")
    if value.count("@") != 1:
        raise _Invalid(f"{label} must contain exactly one @, as in name@example.org.")
    local, domain = value.split("@")
    if not local or not domain:
        raise _Invalid(f"{label} needs a name before and a domain after the @.")
    if len(local) > 64:
        raise _Invalid(f"{label}: the part before the @ is too long (at most 64 characters).")
    bad = sorted({c for c in local if c.isascii() and not (c.isalnum() or c in _ATEXT or c == ".")})
    if bad:
        shown = " ".join(f"“{c}”" for c in bad)
        raise _Invalid(f"{label} contains characters not allowed before the @: {shown}.")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise _Invalid(f"{label} has a misplaced dot before the @.")
    domain = domain.lower()
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.match(part) for part in labels):
        raise _Invalid(f"{label} has an invalid domain after the @ ({domain}).")
    value = f"{local}@{domain}"
    if not EMAIL_RE.fullmatch(value):  # as scirepo.users.ensure_user will check it
        raise _Invalid(f"{label} is not a valid address.")
    return value


def _run_ssh_keygen(line: str) -> tuple[int, str]:
    """(bits, type as ssh-keygen names it) of the public key `line`; raises _Invalid
    if ssh-keygen cannot read it."""
    with tempfile.TemporaryDirectory(prefix="scirepo-key-") as tmp:
        path = os.path.join(tmp, "key.pub")
        with open(path, "w", encoding="utf-8") as f:
            f.write(line + "\n")
        try:
            result = subprocess.run(
                ["ssh-keygen", "-l", "-f", path],
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=SSH_KEYGEN_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise ScirepoError("ssh-keygen not found: install openssh-client") from None
        except subprocess.TimeoutExpired:
            raise _Invalid(f"{LABELS['ssh_key']} could not be checked; try again.") from None
    match = re.match(r"^(\d+) \S+ .*\(([A-Z0-9-]+)\)$", result.stdout.strip())
    if result.returncode != 0 or not match:
        raise _Invalid(
            f"{LABELS['ssh_key']} is not a valid public key; paste the whole line of your "
            "key's .pub file (for example ~/.ssh/id_ed25519.pub)."
        )
    return int(match.group(1)), match.group(2)


def _ssh_key(raw: str) -> str | None:
    label = LABELS["ssh_key"]
    if "-----BEGIN" in raw or "PRIVATE KEY" in raw or "PuTTY-User-Key-File" in raw:
        raise _Invalid(
            f"{label} looks like a private key. Never share your private key: paste the "
            "public one, the .pub file (for example ~/.ssh/id_ed25519.pub)."
        )
    if "---- BEGIN SSH2 PUBLIC KEY ----" in raw:
        raise _Invalid(
            f"{label} is in the SSH2 (PuTTY) format; paste it in OpenSSH format, one line "
            "starting with ssh-ed25519 or similar (PuTTYgen: 'Public key for pasting into "
            "OpenSSH authorized_keys file')."
        )
    if not raw.strip():
        return None
    if "\n" in raw.strip() or "\r" in raw.strip():
        raise _Invalid(f"{label} must be one line: one public key.")
    value = _text("ssh_key", raw)
    parts = value.split(" ", 2)
    kind = parts[0]
    if kind not in SSH_KEY_TYPES:
        accepted = ", ".join(t for t in SSH_KEY_TYPES if t != "ssh-rsa")
        if kind in ("ssh-dss", "ssh-rsa1") or kind.startswith("ssh-") or "@openssh.com" in kind:
            raise _Invalid(
                f"{label}: keys of type {kind[:40]} are not accepted; use one of {accepted}, "
                f"or ssh-rsa with at least {MIN_RSA_BITS} bits."
            )
        raise _Invalid(
            f"{label} is not an OpenSSH public key; it should start with the key type "
            f"(such as ssh-ed25519) followed by the key."
        )
    if len(parts) < 2:
        raise _Invalid(f"{label} is incomplete: the key itself is missing after {kind}.")
    blob = parts[1]
    try:
        base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{label} is damaged: the key is not valid base64.") from None
    comment = parts[2] if len(parts) > 2 else ""
    if any(word in SSH_KEY_TYPES for word in comment.split()):
        raise _Invalid(f"{label} must be one key; paste only one.")
    clean = f"{kind} {blob}" + (f" {comment}" if comment else "")
    bits, reported = _run_ssh_keygen(clean)
    if reported != SSH_KEY_TYPES[kind]:
        raise _Invalid(f"{label} is not a valid {kind} key.")
    if kind == "ssh-rsa" and bits < MIN_RSA_BITS:
        raise _Invalid(
            f"{label} is an RSA key of {bits} bits, too weak; use at least {MIN_RSA_BITS} "
            "bits, or better an ed25519 key (ssh-keygen -t ed25519)."
        )
    return clean


def validate_signup(form: Mapping[str, str], *, policy_required: bool = True) -> tuple[dict, dict]:
    """Check a submitted signup form; return (clean, errors).

    `errors` maps a field name to one message for that field, written for the person
    filling in the form; it is empty when the form is valid. `clean` holds the cleaned
    value of every field that passed: "full_name" (NFC, whitespace collapsed, commas and
    colons made spaces), "email" (domain lowercased), "institution", "purpose" (line
    breaks kept as \\n), "ssh_key" ("type base64 [comment]", or None if none was given),
    "policy" (bool), and always "username": `names.username_base` of the full name, or
    None if the name gives none (no Latin letters: an administrator picks the username
    then; not an error) or the full name is wrong. The username is not de-duplicated:
    the caller does that (`names.choose_username`).

    `website` is a honeypot field, hidden from people by the form: when it is filled in,
    errors["website"] is "spam". The caller should then drop the submission quietly
    (answer as if it succeeded, store nothing) rather than show the message.

    Missing fields count as empty; fields not listed here are ignored.
    """
    clean: dict = {}
    errors: dict = {}

    def value(field: str) -> str:
        raw = form.get(field)
        if raw is None:
            return ""
        if not isinstance(raw, str):
            raise _Invalid(f"{LABELS.get(field, field)} must be text.")
        return raw

    checks = {
        "full_name": lambda: _full_name(value("full_name")),
        "email": lambda: _email(value("email")),
        "institution": lambda: _text("institution", value("institution")),
        "purpose": lambda: _text("purpose", value("purpose"), multiline=True),
        "ssh_key": lambda: _ssh_key(value("ssh_key")),
    }
    for field, check in checks.items():
        try:
            clean[field] = check()
        except _Invalid as exc:
            errors[field] = str(exc)

    raw_policy = form.get("policy")
    accepted = isinstance(raw_policy, str) and raw_policy.strip().lower() in POLICY_YES
    clean["policy"] = accepted
    if policy_required and not accepted:
        errors["policy"] = "You must accept the usage policy."

    honeypot = form.get("website")
    if honeypot is not None and (not isinstance(honeypot, str) or honeypot.strip()):
        errors["website"] = "spam"

    clean["username"] = None
    if "full_name" in clean:
        with contextlib.suppress(AccountInputError):
            clean["username"] = username_base(clean["full_name"])
    return clean, errors
