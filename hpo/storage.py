"""Where a study lives: a journal file in the run folder by default, or a database URL for many workers."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from hpo.errors import SearchConfigError
from hpo.workers import retry_lost_trial

DEFAULT_HEARTBEAT_SECONDS = 10  # databases only; a trial silent for GRACE_FACTOR x this is declared lost
GRACE_FACTOR = 3
CONNECT_TIMEOUT_SECONDS = 5


def open_storage(url: str | None, *, heartbeat_seconds: int | None = None) -> optuna.storages.BaseStorage | None:
    """None: in memory. A path ending in .log/.journal: a journal file (no server, safe for several
    processes on one machine). sqlite:// or postgresql:// URLs: Optuna's relational storage, with
    heartbeats (``heartbeat_seconds``, default 10; 0 turns them off) so a dead worker's trial is retried."""
    if url is None:
        return None
    if "://" not in url:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    beat = DEFAULT_HEARTBEAT_SECONDS if heartbeat_seconds is None else heartbeat_seconds
    if url.startswith("sqlite"):
        # Several workers on one SQLite file wait for the write lock instead of failing at once.
        return _open_rdb(url, {"connect_args": {"timeout": 60}}, beat)
    if url.startswith(("postgresql", "mysql")):
        engine = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            _require_driver(url)
            engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        return _open_rdb(url, engine, beat)
    raise SearchConfigError(f"--storage {redact(url)!r}: expected a file path, sqlite:///..., or postgresql://...")


def redact(url: str) -> str:
    """The URL without its password, for logs and result files."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _require_driver(url: str) -> None:
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1's default PostgreSQL driver)
    except ImportError as exc:
        raise SearchConfigError(
            f"--storage {redact(url)!r}: PostgreSQL needs the psycopg driver: pip install 'tunelab[postgres]'"
        ) from exc


def _open_rdb(url: str, engine_kwargs: dict, heartbeat_seconds: int) -> RDBStorage:
    beats = (
        {
            "heartbeat_interval": heartbeat_seconds,
            "grace_period": GRACE_FACTOR * heartbeat_seconds,
            "heartbeat_stale_trial_callback": retry_lost_trial,
        }
        if heartbeat_seconds
        else {}
    )
    # Workers starting together race to create the schema ("table studies already exists", or a duplicate
    # alembic_version row): the loser retries and finds the tables made.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
        except Exception as exc:  # sqlalchemy raises driver-specific errors
            text = str(exc)
            if ("already exists" in text or "UNIQUE constraint" in text or "duplicate key" in text) and attempt < 4:
                time.sleep(0.2 * (attempt + 1))
                continue
            first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            raise SearchConfigError(f"--storage {redact(url)!r}: cannot open it: {first_line}") from exc
    raise AssertionError("unreachable")
