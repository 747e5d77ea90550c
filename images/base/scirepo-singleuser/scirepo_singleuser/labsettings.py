"""JupyterLab's settings API without two pieces of work that change nothing in its answers.

JupyterLab asks its server for every plugin's settings at each page load, twice
(`GET /lab/api/settings`), and for single plugins a few more times. For each of the some
seventy schemas, jupyterlab_server (`settings_utils.get_settings`):

1. checks the schema against JSON Schema's meta-schema (`Draft7Validator.check_schema`),
   every time, although the schema files are the image's own and never change while the
   server runs. Here each distinct schema (the schema after the overrides, as checked) is
   checked once per server; a schema that fails is checked, and refused, every time as
   before.
2. walks the schema with its regular expressions to translate titles and descriptions
   into the page's locale, even when there is nothing to translate them with. The image
   has no language pack, and its `LANG=C.UTF-8` makes Python report the locale `en_US`,
   not JupyterLab's own `en`, which jupyterlab_server would skip. Here a schema is left as
   it is when the translation bundle for its domain is gettext's NullTranslations, which
   returns every string unchanged: exactly what the walk would produce. With a language
   pack installed (a real translation), the walk runs as before.

Together they took about 30 of the 55 ms one listing took (`bench` note in the README);
the answers are the same (tests/images/test_base_image.py compares them). Both are applied
by `apply()` at server start to the pinned jupyterlab_server of the image's lock.
"""

from __future__ import annotations

import gettext
import hashlib
import json


class CheckedOnce:
    """Stands in for jsonschema's validator class in jupyterlab_server.settings_utils:
    the same class in every use, but `check_schema` checks each distinct schema once."""

    def __init__(self, validator) -> None:
        self.validator = validator
        self.passed: set[bytes] = set()  # sha256 of the canonical JSON of checked schemas

    def __call__(self, *args, **kwargs):
        return self.validator(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.validator, name)

    def check_schema(self, schema, *args, **kwargs) -> None:
        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).digest()
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


def apply() -> bool:
    """Install both in jupyterlab_server; False (nothing changed) without it."""
    try:
        from jupyterlab_server import settings_utils, translation_utils
    except ImportError:
        return False
    if not isinstance(settings_utils.Validator, CheckedOnce):
        settings_utils.Validator = CheckedOnce(settings_utils.Validator)
    translator = translation_utils.translator
    if not getattr(translator.translate_schema, "scirepo", False):
        translator.translate_schema = staticmethod(
            untranslated_as_is(translator, translator.translate_schema)
        )
    return True
