"""Several workers on one study (one per GPU or node, on PostgreSQL): who queues the planned trials, heartbeats,
lost trials retried, and waiting for the others before the result is read.

Coordination is Optuna's, not ours: the database's unique study name decides which worker creates the
study (that worker alone queues the untuned trial and the grid), and Optuna's RDB heartbeats mark a trial
whose worker died (kill -9, node loss) as failed after a grace period; our stale-trial callback then queues
it again with the same parameters, so another worker retrains it from scratch.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from hpo import attributes
from hpo.errors import SearchConfigError

MAX_RETRIES = 2  # a trial that kills its worker three times is not retried again
# What a retried trial keeps of the lost one: besides its role and notes, its params when they were given
# (outside the space), and which proposal it replaced, so a replaced proposal names the retry that ran.
CARRIED_ATTRS = (*attributes.STAND_IN_KEEPS, attributes.GIVEN_PARAMS, attributes.REPLACES)


def create_or_join(make_study: Callable[[bool], optuna.Study]) -> tuple[optuna.Study, bool]:
    """``make_study(load_if_exists)``; True when this worker created the study (and must queue trials)."""
    try:
        return make_study(False), True
    except DuplicatedStudyError:
        return make_study(True), False


def wait_until_queued(study: optuna.Study, timeout: float = 300.0, poll: float = 0.5) -> None:
    """A joining worker waits for the creator to queue the planned trials (untuned first, grid points)."""
    deadline = time.monotonic() + timeout
    while not study.user_attrs.get(attributes.QUEUED):
        if time.monotonic() > deadline:
            raise SearchConfigError(
                f"study {study.study_name!r}: the worker that created it did not queue its planned trials "
                f"within {timeout:.0f} s (did it fail? see its log)"
            )
        time.sleep(poll)


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat in a thread while it runs (RDB storages with heartbeats only)."""
    storage = study._storage  # Optuna's ask/tell API has no public heartbeat hook
    if not heartbeats_enabled(study):
        yield
        return
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception:  # the database may be restarting: the next beat retries
                pass
            stop.wait(interval)

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)


def beat_now(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record one heartbeat of ``trial`` now, in this thread. Optuna fails only trials with a stale heartbeat:
    a worker killed after asking for a trial and before its first beat left it RUNNING for ever, and the other
    workers waited on it (seen in tests/test_workers_postgres.py's killed-worker test)."""
    if heartbeats_enabled(study):
        try:
            study._storage.record_heartbeat(trial._trial_id)
        except Exception:  # the database may be restarting: the heartbeat thread retries
            pass


def retry_lost_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna calls this when it fails a trial whose heartbeat stopped: queue it again, same parameters."""
    retries = int(trial.user_attrs.get(attributes.RETRIES, 0))
    if retries >= MAX_RETRIES:
        return
    attrs = {k: v for k, v in trial.user_attrs.items() if k in CARRIED_ATTRS}
    attrs.update({attributes.RETRY_OF: trial.number, attributes.RETRIES: retries + 1})
    params = {} if attributes.GIVEN_PARAMS in attrs else dict(trial.params)
    study.enqueue_trial(params, user_attrs=attrs)


def fail_lost_trials(study: optuna.Study) -> None:
    """Fail (and so retry) trials whose worker stopped sending heartbeats; a no-op on other storages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def others_running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def heartbeats_enabled(study: optuna.Study) -> bool:
    """Only then can a worker wait for the others: elsewhere a killed worker's trial stays RUNNING for ever."""
    storage = study._storage
    return bool(hasattr(storage, "get_heartbeat_interval") and storage.get_heartbeat_interval())


T = TypeVar("T")
RECONNECT_ATTEMPTS = 12  # x RECONNECT_SECONDS: how long a worker waits for a restarting database
RECONNECT_SECONDS = 5.0


def rejoin_on_connection_loss(run: Callable[[], T], *, attempts: int = RECONNECT_ATTEMPTS) -> T:
    """Call ``run`` (a worker's search); if the database connection drops, wait and call it again: the
    worker rejoins the study, and the trial it was running is retried once declared lost."""
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except Exception as exc:
            if not is_connection_error(exc) or attempt == attempts:
                raise
            print(
                f"[worker] lost the database ({type(exc).__name__}); rejoining in {RECONNECT_SECONDS:.0f} s "
                f"(attempt {attempt}/{attempts})",
                file=sys.stderr,
            )
            time.sleep(RECONNECT_SECONDS)
    raise AssertionError("unreachable")


def is_connection_error(exc: BaseException | None) -> bool:
    from sqlalchemy.exc import DBAPIError

    while exc is not None:
        if isinstance(exc, DBAPIError):  # OperationalError (server gone) and the driver's other errors
            return True
        exc = exc.__cause__ or exc.__context__
    return False
