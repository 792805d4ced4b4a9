"""What the user passed, checked: a ``--db`` that is a LangGraph SQLite checkpoint file.

Bad input is one line on stderr and exit status 2, never a traceback (DESIGN.md,
"Checkpoints"): :class:`BadInput` is a click error that prints just its line, and
:func:`reading` opens the file only once it is known to hold checkpoints, so a wrong
``--db`` is never created, written to, or given LangGraph's tables.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import click
from langgraph.checkpoint.sqlite import SqliteSaver

from sanegraph.guards._compat import SQLITE_TABLES

__all__ = ("BadInput", "reading")

_SQLITE_HEADER = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file (an empty file is an empty database)."""
_PASS_DB = "Pass --db with a checkpoint file written by SqliteSaver"


class BadInput(click.ClickException):
    """Input the command cannot use: printed as one ``sanegraph: ...`` line, exit status 2."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message on stderr (or ``file``), without click's usage lines."""
        click.echo(f"sanegraph: {self.format_message()}", file=file, err=file is None)


def _check_file(db: str) -> Path:
    """``db`` as a path to an existing SQLite file, or :class:`BadInput` saying what to pass."""
    path = Path(db)
    if not path.exists():
        raise BadInput(f"no such file: {db}. {_PASS_DB}, or run `sanegraph demo` to write one.")
    if path.is_dir():
        raise BadInput(f"{db} is a directory. {_PASS_DB}.")
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise BadInput(f"cannot read {db} ({exc.strerror or exc}). {_PASS_DB}.") from exc
    if header not in (b"", _SQLITE_HEADER):
        raise BadInput(f"{db} is not a SQLite file. {_PASS_DB}.")
    return path


def _connect(db: str, path: Path) -> sqlite3.Connection:
    """A connection to ``path`` once it has LangGraph's tables; never creates the file."""
    # mode=rw: open an existing file only (a plain connect would create a missing one).
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, check_same_thread=False)
    try:
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        missing = [name for name in SQLITE_TABLES if name not in tables]
        if missing:
            names = " and ".join(f"'{name}'" for name in missing)
            raise BadInput(
                f"{db} is a SQLite file without LangGraph's {names} "
                f"table{'s' if len(missing) > 1 else ''}. {_PASS_DB}."
            )
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def reading(db: str) -> Iterator[SqliteSaver]:
    """Open the checkpoint file ``db`` for the length of a ``with`` block.

    The file must exist and hold LangGraph's checkpoint tables; it is opened as it is
    (no tables created). SQLite errors while reading, such as a damaged file, become
    :class:`BadInput` too.

    Args:
        db: The ``--db`` value, as the user spelled it (the messages repeat it).

    Yields:
        A ``SqliteSaver`` on the file.

    Raises:
        BadInput: The file is missing, a directory, not SQLite, without checkpoints, or
            unreadable.
    """
    path = _check_file(db)
    try:
        conn = _connect(db, path)
    except sqlite3.Error as exc:
        raise BadInput(f"cannot read {db} ({exc}). {_PASS_DB}.") from exc
    try:
        yield SqliteSaver(conn)
    except sqlite3.Error as exc:
        raise BadInput(f"cannot read {db} ({exc}). {_PASS_DB}.") from exc
    finally:
        with suppress(sqlite3.Error):
            conn.close()
