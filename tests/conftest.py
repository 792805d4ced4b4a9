"""Shared fixtures: real checkpointers (never mocked), one thread id per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from sanegraph.checkpoints import async_sqlite_saver, sqlite_saver


@pytest.fixture(params=["memory", "sqlite"])
def saver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseCheckpointSaver[Any]]:
    """A sync-capable checkpointer: InMemorySaver, then SqliteSaver on a file (WAL)."""
    if request.param == "memory":
        yield InMemorySaver()
        return
    with sqlite_saver(tmp_path / "runs" / "checkpoints.sqlite") as sqlite:
        yield sqlite


@pytest.fixture(params=["memory", "async-sqlite"])
async def async_saver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """An async-capable checkpointer: InMemorySaver, then AsyncSqliteSaver on a file."""
    if request.param == "memory":
        yield InMemorySaver()
        return
    async with async_sqlite_saver(tmp_path / "runs" / "checkpoints.sqlite") as aio:
        yield aio


@pytest.fixture
def config() -> dict[str, Any]:
    """A run config with a fresh thread id."""
    return {"configurable": {"thread_id": uuid.uuid4().hex}}
