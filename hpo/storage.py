"""Where a study lives: a journal file in the run folder by default, or an SQLAlchemy URL."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from finetune.errors import ConfigError


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """None: in memory. A path ending in .log/.journal: a journal file (no server, safe for several
    processes on one machine). sqlite:// or postgresql:// URLs: Optuna's relational storage."""
    if url is None:
        return None
    if "://" not in url:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if url.startswith("sqlite"):
        # Several workers on one SQLite file wait for the write lock instead of failing at once.
        return _open_rdb(url, {"connect_args": {"timeout": 60}})
    if url.startswith(("postgresql", "mysql")):
        return _open_rdb(url, {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}})
    raise ConfigError(f"--storage {url!r}: expected a file path, sqlite:///..., or postgresql://...")


def _open_rdb(url: str, engine_kwargs: dict) -> RDBStorage:
    # Workers starting together race to create the schema ("table studies already exists", or a duplicate
    # alembic_version row): the loser retries and finds the tables made.
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # sqlalchemy raises driver-specific errors
            if ("already exists" in str(exc) or "UNIQUE constraint" in str(exc)) and attempt < 4:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ConfigError(f"--storage {url!r}: cannot open it: {exc}") from exc
    raise AssertionError("unreachable")
