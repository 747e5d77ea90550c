"""The signup form (scirepo.accounts.validate.validate_signup)."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess

import pytest

from scirepo.accounts.validate import validate_signup

pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen")

SQL = "'; DROP TABLE requests; --"
SHELL = "$(rm -rf /) `id` | cat /etc/passwd & echo > /tmp/x; <y"

GOOD = {
    "full_name": "Zoë Ødegård",
    "email": "Zoe.Odegard@Uni-Example.ORG",
    "institution": "University of Example",
    "purpose": "Analysis of sequencing data for my thesis.",
    "ssh_key": "",
    "policy": "on",
    "website": "",
}


def form(**changes) -> dict:
    out = dict(GOOD)
    out.update(changes)
    return out


def _keygen(directory, name: str, *args: str) -> str | None:
    path = directory / name
    result = subprocess.run(
        ["ssh-keygen", "-q", *args, "-N", "", "-C", "zoe@laptop", "-f", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    return str(path)


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    """Public key lines (and one private key) by name."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name, args in {
        "ed25519": ("-t", "ed25519"),
        "ecdsa256": ("-t", "ecdsa", "-b", "256"),
        "ecdsa384": ("-t", "ecdsa", "-b", "384"),
        "ecdsa521": ("-t", "ecdsa", "-b", "521"),
        "rsa1024": ("-t", "rsa", "-b", "1024"),
        "rsa3072": ("-t", "rsa", "-b", "3072"),
        "dsa": ("-t", "dsa"),
    }.items():
        path = _keygen(d, name, *args)
        if path:
            with open(path + ".pub", encoding="utf-8") as f:
                out[name] = f.read()
            if name == "ed25519":
                with open(path, encoding="utf-8") as f:
                    out["private"] = f.read()
    # Security-key public keys, built by hand (no token needed to read one).
    sk = _ssh_string(b"sk-ssh-ed25519@openssh.com") + _ssh_string(b"\x01" * 32)
    sk += _ssh_string(b"ssh:")
    out["sk-ed25519"] = f"sk-ssh-ed25519@openssh.com {base64.b64encode(sk).decode()} yubikey\n"
    blob = base64.b64decode(out["ecdsa256"].split()[1])
    fields, i = [], 0
    while i < len(blob):
        (n,) = struct.unpack(">I", blob[i : i + 4])
        fields.append(blob[i + 4 : i + 4 + n])
        i += 4 + n
    skec = _ssh_string(b"sk-ecdsa-sha2-nistp256@openssh.com") + _ssh_string(fields[1])
    skec += _ssh_string(fields[2]) + _ssh_string(b"ssh:")
    out["sk-ecdsa"] = f"sk-ecdsa-sha2-nistp256@openssh.com {base64.b64encode(skec).decode()}\n"
    return out


# --------------------------------------------------------------------------- whole form


def test_valid_form():
    clean, errors = validate_signup(GOOD)
    assert errors == {}
    assert clean == {
        "full_name": "Zoë Ødegård",
        "email": "Zoe.Odegard@uni-example.org",  # only the domain is lowercased
        "institution": "University of Example",
        "purpose": "Analysis of sequencing data for my thesis.",
        "ssh_key": None,
        "policy": True,
        "username": "zodegard",
    }


def test_empty_form():
    clean, errors = validate_signup({})
    assert set(errors) == {"full_name", "email", "institution", "purpose", "policy"}
    assert errors["full_name"] == "Full name is required."
    assert errors["email"] == "Email address is required."
    assert errors["institution"] == "Institution is required."
    assert errors["purpose"] == "Purpose is required."
    assert errors["policy"] == "You must accept the usage policy."
    assert clean["ssh_key"] is None and clean["username"] is None


def test_unknown_fields_ignored():
    clean, errors = validate_signup(form(is_admin="yes", username="root"))
    assert errors == {}
    assert "is_admin" not in clean and clean["username"] == "zodegard"


# --------------------------------------------------------------------------- every field


@pytest.mark.parametrize("field", ["full_name", "email", "institution", "purpose", "ssh_key"])
@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("Zoe\x00Odegard purpose text", "contains a NUL character"),
        ("Zoe\x1bOdegard purpose text", "control character (U+001B)"),
        ("Zoe\x7fOdegard purpose text", "control character (U+007F)"),
        ("Zoe\x85Odegard purpose text", "control character (U+0085)"),
        ("Zoe\u202eOdegard purpose text", "control character (U+202E)"),
    ],
)
def test_control_characters_refused_everywhere(field, bad, words):
    _, errors = validate_signup(form(**{field: bad}))
    assert words in errors[field]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("full_name", "Zoë " * 75, "Full name is too long (299 characters, at most 100)."),
        ("full_name", "Z" * 300, "Full name is too long (300 characters, at most 100)."),
        (
            "email",
            "z" * 288 + "@example.org",
            "Email address is too long (300",
        ),
        ("institution", "I" * 300, "Institution is too long (300 characters, at most 200)."),
        ("purpose", "P" * 300, None),
        ("ssh_key", "ssh-ed25519 " + "A" * 288, "SSH public key is not a valid public key"),
        ("policy", "o" * 300, "You must accept the usage policy."),
        ("website", "w" * 300, "spam"),
    ],
)
def test_300_characters(field, value, message):
    assert len(value.strip()) in (299, 300)
    clean, errors = validate_signup(form(**{field: value}))
    if message is None:
        assert field not in errors and clean[field] == value
    else:
        assert errors[field].startswith(message)


def test_lengths():
    cases = {
        "full_name": ("x" * 101, "Full name is too long (101 characters, at most 100)."),
        "institution": ("x" * 201, "Institution is too long (201 characters, at most 200)."),
        "purpose": ("x" * 2001, "Purpose is too long (2001 characters, at most 2000)."),
        "email": ("a" * 250 + "@x.io", "Email address is too long (255 characters, at most 254)."),
    }
    for field, (value, message) in cases.items():
        _, errors = validate_signup(form(**{field: value}))
        assert errors[field] == message
    _, errors = validate_signup(form(full_name="Z", institution="X", purpose="Too short"))
    assert errors["full_name"] == "Full name is too short (1 character, at least 2)."
    assert errors["institution"] == "Institution is too short (1 character, at least 2)."
    assert errors["purpose"] == "Purpose is too short (9 characters, at least 10)."
    # Lengths count after stripping and (on one line) collapsing whitespace.
    clean, errors = validate_signup(form(full_name="  Zoë   " + " " * 500 + "Ødegård  "))
    assert errors == {} and clean["full_name"] == "Zoë Ødegård"
    # A huge value is refused without being scanned.
    _, errors = validate_signup(form(purpose="\x00" * 10**6))
    assert errors["purpose"] == "Purpose is too long (1000000 characters, at most 2000)."


@pytest.mark.parametrize("text", [SQL, SHELL])
def test_sql_and_shell_are_text_in_institution_and_purpose(text):
    clean, errors = validate_signup(form(institution=text, purpose=text))
    assert "institution" not in errors and "purpose" not in errors
    assert clean["institution"] == " ".join(text.split())
    assert clean["purpose"] == text


@pytest.mark.parametrize("text", [SQL, SHELL])
def test_sql_and_shell_refused_elsewhere(text):
    _, errors = validate_signup(
        form(full_name=text, email=text, ssh_key=text, policy=text, website=text)
    )
    assert "may only contain letters" in errors["full_name"]
    assert "remove" in errors["full_name"]
    assert errors["email"].startswith("Email address")
    assert errors["ssh_key"].startswith("SSH public key")
    assert errors["policy"] == "You must accept the usage policy."
    assert errors["website"] == "spam"


# --------------------------------------------------------------------------- full name


@pytest.mark.parametrize(
    ("value", "clean", "username"),
    [
        ("John Doe", "John Doe", "jdoe"),
        ("Jean-Luc O'Brien", "Jean-Luc O'Brien", "jobrien"),
        ("John O’Connor", "John O’Connor", "joconnor"),
        ("Martin Luther King Jr.", "Martin Luther King Jr.", "mking"),
        ("Doe, John", "Doe John", "djohn"),  # commas are GECOS separators: spaces
        ("Doe:John", "Doe John", "djohn"),
        ("Zoe\u0308 Ødegård", "Zoë Ødegård", "zodegard"),  # NFC
        ("Иван Петров", "Иван Петров", None),  # no Latin letters: an admin picks a name
        ("王小明", "王小明", None),
        ("John 李", "John 李", None),
        ("Nguyễn Thị Minh Khai", "Nguyễn Thị Minh Khai", "nkhai"),
        ("मोहनदास करमचंद गांधी", "मोहनदास करमचंद गांधी", None),  # marks are fine
        ("Bob\tMüller", "Bob Müller", "bmuller"),  # tabs are whitespace
        ("مهدی\u200cزاده", "مهدی\u200cزاده", None),  # ZWNJ belongs to Persian names
        ("Zoe Odegard\n", "Zoe Odegard", "zodegard"),  # a surrounding newline is dropped
    ],
)
def test_full_name_accepted(value, clean, username):
    result, errors = validate_signup(form(full_name=value))
    assert errors == {}
    assert result["full_name"] == clean
    assert result["username"] == username


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "Bobby $(id)",
            "Full name may only contain letters, spaces, apostrophes, hyphens and "
            "periods; remove “$” “(” “)”.",
        ),
        ("Bob; ls", "remove “;”"),
        ("Bob `id`", "remove “`”"),
        ("Bob | cat", "remove “|”"),
        ("<script>", "remove “<” “>”"),
        ("Bob & Alice", "remove “&”"),
        ("John Smith 3rd", "remove “3”"),
        ("---", "Full name must contain letters."),
        ("'. -", "Full name must contain letters."),
        (",,,", "Full name must contain letters."),
        ("Zoe\nOdegard", "Full name contains a line break; remove it."),
    ],
)
def test_full_name_refused(value, message):
    result, errors = validate_signup(form(full_name=value))
    assert message in errors["full_name"]
    assert "full_name" not in result and result["username"] is None


# --------------------------------------------------------------------------- email


@pytest.mark.parametrize(
    ("value", "clean"),
    [
        ("zoe@example.org", "zoe@example.org"),
        ("  Zoe+lab@Example.ORG ", "Zoe+lab@example.org"),
        ("first.last@sub.uni-x.ac.uk", "first.last@sub.uni-x.ac.uk"),
        ("zoë@müller.de", "zoë@müller.de"),
        ("o'brien@example.org", "o'brien@example.org"),
    ],
)
def test_email_accepted(value, clean):
    result, errors = validate_signup(form(email=value))
    assert errors == {}
    assert result["email"] == clean


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("zoe", "must contain exactly one @"),
        ("zoe@@example.org", "must contain exactly one @"),
        ("a@b@example.org", "must contain exactly one @"),
        ("zoe@localhost", "invalid domain"),
        ("zoe@example..org", "invalid domain"),
        ("zoe@.example.org", "invalid domain"),
        ("zoe@example.org.", "invalid domain"),
        ("zoe@-example.org", "invalid domain"),
        ("zoe@exa_mple.org", "invalid domain"),
        ("@example.org", "name before and a domain after"),
        ("zoe@", "name before and a domain after"),
        ("zoe odegard@example.org", "must not contain spaces"),
        ("zoe@exa mple.org", "must not contain spaces"),
        ("zoe,x@example.org", "not allowed before the @: “,”"),
        ("zoe;id@example.org", "not allowed before the @: “;”"),
        ("<zoe>@example.org", "“<” “>”"),
        (".zoe@example.org", "misplaced dot"),
        ("zo..e@example.org", "misplaced dot"),
        ("z" * 65 + "@example.org", "before the @ is too long"),
        ("zoe\x00@example.org", "NUL"),
    ],
)
def test_email_refused(value, message):
    _, errors = validate_signup(form(email=value))
    assert message in errors["email"]
    assert errors["email"].startswith("Email address")


# --------------------------------------------------------------------------- purpose


def test_purpose_keeps_lines():
    text = "  First line\r\nSecond\tline   \r\n\r\nThird  \n"
    clean, errors = validate_signup(form(purpose=text))
    assert errors == {}
    assert clean["purpose"] == "First line\nSecond line\n\nThird"


# --------------------------------------------------------------------------- ssh key


@pytest.mark.parametrize(
    "name", ["ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa3072", "sk-ed25519", "sk-ecdsa"]
)
def test_ssh_key_accepted(keys, name):
    line = keys[name]
    clean, errors = validate_signup(form(ssh_key="  " + line + "\n"))
    assert errors == {}
    assert clean["ssh_key"] == " ".join(line.split())


def test_ssh_key_comment_cleaned(keys):
    kind, blob = keys["ed25519"].split()[:2]
    clean, errors = validate_signup(form(ssh_key=f"{kind}\t{blob}   zoe  at\tlaptop ü"))
    assert errors == {}
    assert clean["ssh_key"] == f"{kind} {blob} zoe at laptop ü"
    clean, errors = validate_signup(form(ssh_key=f"{kind} {blob}"))
    assert errors == {} and clean["ssh_key"] == f"{kind} {blob}"
    clean, errors = validate_signup(form(ssh_key=f"{kind} {blob} windows\r\n"))
    assert errors == {} and clean["ssh_key"] == f"{kind} {blob} windows"


def test_ssh_key_private(keys):
    _, errors = validate_signup(form(ssh_key=keys["private"]))
    assert "looks like a private key" in errors["ssh_key"]
    _, errors = validate_signup(form(ssh_key="-----BEGIN RSA PRIVATE KEY-----"))
    assert "looks like a private key" in errors["ssh_key"]


def test_ssh_key_rsa_1024(keys):
    _, errors = validate_signup(form(ssh_key=keys["rsa1024"]))
    assert errors["ssh_key"].startswith("SSH public key is an RSA key of 1024 bits, too weak")


def test_ssh_key_dsa(keys):
    if "dsa" not in keys:
        pytest.skip("this ssh-keygen cannot make DSA keys")
    _, errors = validate_signup(form(ssh_key=keys["dsa"]))
    assert "type ssh-dss are not accepted" in errors["ssh_key"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda k: k["ed25519"][:60], "is not a valid public key"),  # cut short
        (lambda k: k["ed25519"].replace("AAAA", "AAAB", 1), "is not a valid public key"),
        (lambda k: "ssh-rsa " + k["ed25519"].split()[1], "is not a valid public key"),
        (lambda k: "ssh-ed25519 not*base64", "not valid base64"),
        (lambda k: "ssh-ed25519", "the key itself is missing"),
        (lambda k: "AAAAC3NzaC1lZDI1NTE5AAAAI", "is not an OpenSSH public key"),
        (lambda k: 'no-pty,command="sh" ' + k["ed25519"], "is not an OpenSSH public key"),
        (lambda k: k["ed25519"] + k["ecdsa256"], "must be one line"),
        (lambda k: k["ed25519"].strip() + " " + k["ecdsa256"], "must be one key"),
        (lambda k: "ssh-rsa-cert-v01@openssh.com AAAA", "are not accepted"),
        (lambda k: "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n", "SSH2 (PuTTY) format"),
        (lambda k: "ssh-ed25519 " + "A" * 17000, "is too long (17012 characters, at most 16384)"),
        (lambda k: k["ed25519"].strip() + " x\x00y", "NUL"),
        (lambda k: k["ed25519"].strip() + " x\x1b[31m", "control character (U+001B)"),
    ],
)
def test_ssh_key_refused(keys, make, message):
    _, errors = validate_signup(form(ssh_key=make(keys)))
    assert message in errors["ssh_key"]
    assert errors["ssh_key"].startswith("SSH public key")


# --------------------------------------------------------------------------- policy, honeypot


@pytest.mark.parametrize("value", ["on", "yes", "1", "true", "TRUE", " On "])
def test_policy_accepted(value):
    clean, errors = validate_signup(form(policy=value))
    assert errors == {} and clean["policy"] is True


@pytest.mark.parametrize("value", [None, "", "off", "no", "0", "false", "y", SQL, "on\x00"])
def test_policy_refused(value):
    f = form()
    if value is None:
        del f["policy"]
    else:
        f["policy"] = value
    clean, errors = validate_signup(f)
    assert errors == {"policy": "You must accept the usage policy."}
    assert clean["policy"] is False
    clean, errors = validate_signup(f, policy_required=False)
    assert errors == {} and clean["policy"] is False


@pytest.mark.parametrize("value", ["http://spam.example", "x", SQL, "\x00"])
def test_honeypot(value):
    clean, errors = validate_signup(form(website=value))
    assert errors == {"website": "spam"}
    assert "website" not in clean


@pytest.mark.parametrize("value", ["", "   "])
def test_honeypot_empty(value):
    _, errors = validate_signup(form(website=value))
    assert errors == {}


def test_not_text():
    _, errors = validate_signup(form(full_name=["Zoe"], email=42))
    assert errors["full_name"] == "Full name must be text."
    assert errors["email"] == "Email address must be text."
