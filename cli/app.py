"""The ``sanegraph`` command line: ``demo``, ``runs``, ``show``.

``runs`` and ``show`` read a SQLite checkpoint file directly (through the saver, never by
unpickling rows by hand), so they work on any guarded graph's threads without importing
the graph. ``--json`` on every command prints one JSON object or array instead of text.
Bad input (a ``--db`` that is missing, a folder, not SQLite or without checkpoints; an
unknown thread) is one ``sanegraph: ...`` line on stderr and exit status 2.

:func:`main` runs the command in-process and returns its exit status, so tests and
scripts can call ``main(["runs", "--db", path])``; the console script exits with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ._format import runs_lines, show_lines
from ._input import BadInput, reading
from .demo import GraphKind, render, run_demo
from .threads import list_threads, thread_summary

__all__ = ("main",)

DEFAULT_DB = "sanegraph-demo.db"
"""The file ``demo`` writes and ``runs`` / ``show`` read when ``--db`` is not given."""
_F = TypeVar("_F", bound=Callable[..., Any])


def _echo_lines(lines: Sequence[str]) -> None:
    click.echo("\n".join(lines))


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str))


def _db_option(text: str) -> Callable[[_F], _F]:
    return click.option("--db", default=DEFAULT_DB, show_default=True, help=text)


def _json_option(what: str) -> Callable[[_F], _F]:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def _cli() -> None:
    """Guards for LangGraph runs."""


@_cli.command()
@_db_option("SQLite file to write.")
@click.option(
    "--graph",
    type=click.Choice(["sequential", "parallel"]),
    default="sequential",
    show_default=True,
    help="The prebuilt graph the guarded runs use.",
)
@click.option(
    "--max-hops", type=int, default=12, show_default=True, help="The guarded runs' hop cap."
)
@_json_option("one object")
def demo(db: str, graph: GraphKind, max_hops: int, as_json: bool) -> None:
    """Replay the researcher/analyst incident, unguarded and guarded."""
    if max_hops < 2:
        raise click.UsageError(f"--max-hops must be at least 2, got {max_hops}.")
    report = run_demo(db=db, graph=graph, max_hops=max_hops)
    click.echo(report.to_json() if as_json else render(report))


@_cli.command()
@_db_option("SQLite checkpoint file to read.")
@_json_option("one array")
def runs(db: str, as_json: bool) -> None:
    """List the threads in a checkpoint file."""
    with reading(db) as saver:
        threads = list_threads(saver)
    if as_json:
        _echo_json(threads)
    else:
        _echo_lines(runs_lines(threads))


@_cli.command()
@click.argument("thread_id", metavar="THREAD")
@_db_option("SQLite checkpoint file to read.")
@_json_option("one object")
def show(thread_id: str, db: str, as_json: bool) -> None:
    """Show one thread's guard ledger."""
    with reading(db) as saver:
        summary = thread_summary(saver, thread_id)
    if summary is None:
        raise BadInput(f"no thread {thread_id!r} in {db}. `sanegraph runs --db {db}` lists them.")
    if as_json:
        _echo_json(summary)
    else:
        _echo_lines(show_lines(summary))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sanegraph`` command and return its exit status.

    Errors in the arguments print click's usage message and return 2; bad input (see
    the module docstring) prints one line and returns 2. The console script exits with
    the same status.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        0 on success, 2 for a usage error or bad input, 1 if interrupted (Ctrl-C).

    Example:
        ```python
        from sanegraph.cli import main

        status = main(["runs", "--db", "sanegraph-demo.db", "--json"])
        ```
    """
    args = list(argv) if argv is not None else None
    try:
        result = _cli.main(args=args, prog_name="sanegraph", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return result if isinstance(result, int) else 0
