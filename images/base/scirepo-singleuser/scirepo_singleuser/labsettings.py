"""JupyterLab's settings API without two pieces of work that change nothing in its answers.

JupyterLab asks its server for every plugin's settings at each page load, twice
(`GET /lab/api/settings`), and for single plugins a few more times. For each of the some
seventy schemas, jupyterlab_server (`settings_utils.get_settings`):

1. checks the schema against JSON Schema's meta-schema (`Draft7Validator.check_schema`),
   every time, although the schema files are the image's own and never change. Here each
   distinct schema (the schema after the overrides, as checked) is checked once: when the
   image is built (`record()`, run by `python -m scirepo_singleuser.records`, writes the
   digests of the schemas that pass to CHECKED), else once per server. A schema that is not in
   that file (a user's own extension, a user's overrides) is checked at its first use; one
   that fails is checked, and refused, every time as before.
2. walks the schema with its regular expressions to translate titles and descriptions
   into the page's locale, even when there is nothing to translate them with. The image
   has no language pack, and its `LANG=C.UTF-8` makes Python report the locale `en_US`,
   not JupyterLab's own `en`, which jupyterlab_server would skip. Here a schema is left as
   it is when the translation bundle for its domain is gettext's NullTranslations, which
   returns every string unchanged: exactly what the walk would produce. With a language
   pack installed (a real translation), the walk runs as before.

A listing took 51-65 ms; it takes 15-18 ms, the first one in a new server included (the
README's list of what makes a server start sooner). The answers are the same
(tests/images/test_base_image.py compares them). `apply()` installs both at server start
in the pinned jupyterlab_server of the image's lock.
"""

from __future__ import annotations

import gettext
import hashlib
import json
import os
import sys
import tempfile

# Digests (sha256 of the canonical JSON, one hex per line) of the schemas found valid when
# the image was built.
CHECKED = os.path.join(sys.prefix, "share", "scirepo", "lab-schemas-checked")


def digest(schema) -> bytes:
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).digest()


class CheckedOnce:
    """Stands in for jsonschema's validator class in jupyterlab_server.settings_utils:
    the same class in every use, but `check_schema` checks each distinct schema once."""

    def __init__(self, validator, passed=()) -> None:
        self.validator = validator
        self.passed: set[bytes] = set(passed)  # digest() of the schemas found valid

    def __call__(self, *args, **kwargs):
        return self.validator(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.validator, name)

    def check_schema(self, schema, *args, **kwargs) -> None:
        key = digest(schema)
        if key in self.passed:
            return
        self.validator.check_schema(schema, *args, **kwargs)
        self.passed.add(key)


def untranslated_as_is(translator, translate_schema):
    """`translator.translate_schema`, except that a schema whose domain has nothing to
    translate with (NullTranslations) is returned as it is."""
    from jupyterlab_server.translation_utils import DEFAULT_DOMAIN

    def translate(schema: dict) -> dict:
        domain = schema.get("jupyter.lab.internationalization", {}).get("domain", DEFAULT_DOMAIN)
        bundle = translator.load(domain)
        if type(getattr(bundle, "_translator", None)) is gettext.NullTranslations:
            return schema
        return translate_schema(schema)

    translate.scirepo = True
    return translate


def read_checked(path: str = CHECKED) -> set[bytes]:
    """The digests in `path`; none if it is missing (a line that is not one is skipped:
    its schema is checked at its first use)."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().split()
    except (OSError, UnicodeDecodeError):
        return set()
    found = set()
    for line in lines:
        try:
            key = bytes.fromhex(line)
        except ValueError:
            continue
        if len(key) == hashlib.sha256().digest_size:
            found.add(key)
    return found


def apply(checked: str = CHECKED) -> bool:
    """Install both in jupyterlab_server; False (nothing changed) without it."""
    try:
        from jupyterlab_server import settings_utils, translation_utils
    except ImportError:
        return False
    if not isinstance(settings_utils.Validator, CheckedOnce):
        settings_utils.Validator = CheckedOnce(settings_utils.Validator, read_checked(checked))
    translator = translation_utils.translator
    if not getattr(translator.translate_schema, "scirepo", False):
        translator.translate_schema = staticmethod(
            untranslated_as_is(translator, translator.translate_schema)
        )
    return True


def record(path: str = CHECKED) -> int:
    """Check every schema JupyterLab's settings API serves in this environment, with its
    overrides, and write the digests of those that pass to `path`; their number. Run when
    the image is built, after the last JupyterLab extension is installed."""
    from jupyterlab.labapp import LabApp
    from jupyterlab_server import settings_utils

    lab = LabApp()
    installed = settings_utils.Validator
    validator = installed.validator if isinstance(installed, CheckedOnce) else installed
    checker = CheckedOnce(validator)  # starts with nothing passed: checks every schema
    settings_utils.Validator = checker
    try:
        with tempfile.TemporaryDirectory() as no_user_settings:
            settings_utils.get_settings(
                lab.app_settings_dir,
                lab.schemas_dir,
                no_user_settings,
                labextensions_path=lab.extra_labextensions_path + lab.labextensions_path,
            )
    finally:
        settings_utils.Validator = installed
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        f.writelines(f"{key.hex()}\n" for key in sorted(checker.passed))
    return len(checker.passed)
