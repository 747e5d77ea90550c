"""One transaction on a DB-API connection in autocommit mode (sqlite3 with
isolation_level=None, psycopg with autocommit=True), shared by the accounts store and the
transfer catalog."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def transaction(db, begin: str = "BEGIN IMMEDIATE"):
    """`begin` ... COMMIT, or ROLLBACK on any exception; yields `db`."""
    db.execute(begin)
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
