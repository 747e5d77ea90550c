"""Storage services of a repository host: the `scirepo storage` verb.

`transfer` moves complete uploads from the upload sandbox into site data, verified and
recorded in the catalog; `catalog` queries (and re-verifies) what was transferred;
`usage` and `quota-check` measure usage per user and area and warn users over their soft
quota; `scratch-clean` deletes old files in scratch; `repair` makes or repairs the users'
public and scratch folders and the group directories. Groups themselves are the
`scirepo group` verb (`scirepo.storage.groups`).
storage/README.md describes the areas and how the sandbox maps onto the sites.

Each module in `ACTION_MODULES` exposes `register(actions)`, which adds its action to
`scirepo storage` the way `scirepo.cli.COMMAND_MODULES` adds verbs.
"""

from __future__ import annotations

import importlib

ACTION_MODULES = [
    "scirepo.storage.transfer",
    "scirepo.storage.catalog",
    "scirepo.storage.usage",
    "scirepo.storage.scratch",
    "scirepo.storage.areas",
]


def register(subparsers) -> None:
    """Add the `storage` verb to the `scirepo` command line."""
    parser = subparsers.add_parser(
        "storage",
        help="transfers, catalog, usage and quotas, scratch cleaning, area repair",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name in ACTION_MODULES:
        importlib.import_module(name).register(actions)
