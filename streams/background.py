"""Background tasks after a database commit: the source notes' simplest follow-up.

The business change commits; then the follow-up (a receipt e-mail, a cache
refresh) runs in a bounded thread pool, with retries, and what still fails is
written to a **failure log** table so an operator can list it and run it again
(``streams tasks list|retry``)::

    tasks = BackgroundTasks(settings, max_workers=4)

    @tasks.task("send-receipt")
    def send_receipt(order_id: str, email: str) -> None:
        mail_api.send(...)

    with conn.transaction():
        conn.execute("INSERT INTO orders ...")
    tasks.submit("send-receipt", order_id=order_id, email=email)   # after the commit

What it does **not** do, and the outbox does: the task lives only in this
process's memory between the commit and its run. A crash (SIGKILL, OOM, a
power cut) in that window loses it — no row says it was ever due. Use it where
losing a follow-up now and then is acceptable or noticed by other means (a
receipt e-mail a user can ask for again); use the transactional outbox where it
is not (a command another service must execute).

Tasks are registered by name with JSON-serialisable keyword arguments, so that
a failure row can be run again by a later process that imports the same
registry (``streams tasks retry --tasks module:attribute``). ``submit`` blocks
while ``max_pending`` tasks wait or run: memory stays bounded and a slow
downstream slows the caller instead of piling work up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from streams import db, tracing
from streams.consume.retry import RetryPolicy
from streams.errors import ConfigurationError
from streams.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TABLE = "streams_task_failures"

_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id              bigserial   PRIMARY KEY,
    task            text        NOT NULL,
    args            jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'failed' CHECK (status IN ('failed', 'done')),
    attempts        integer     NOT NULL,
    error_type      text        NOT NULL,
    error_message   text        NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    failed_at       timestamptz NOT NULL DEFAULT now(),
    reruns          integer     NOT NULL DEFAULT 0,
    done_at         timestamptz
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (status, id);
"""

#: the same table in MySQL / MariaDB (times in UTC: every connection runs in UTC)
_MYSQL_DDL = """
CREATE TABLE IF NOT EXISTS `{table}` (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task            VARCHAR(191) NOT NULL,
    args            LONGTEXT     NOT NULL,
    status          VARCHAR(16)  NOT NULL DEFAULT 'failed' CHECK (status IN ('failed', 'done')),
    attempts        INT          NOT NULL,
    error_type      VARCHAR(255) NOT NULL,
    error_message   TEXT         NOT NULL,
    first_failed_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    failed_at       DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    reruns          INT          NOT NULL DEFAULT 0,
    done_at         DATETIME(6)  NULL,
    KEY `{table}_status` (status, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


@dataclass(frozen=True)
class TaskFailure:
    """One row of the failure log."""

    id: int
    task: str
    args: dict[str, Any]
    status: str
    attempts: int
    error_type: str
    error_message: str
    first_failed_at: datetime
    failed_at: datetime
    reruns: int
    done_at: datetime | None

    def summary(self) -> dict[str, Any]:
        """JSON-friendly form (``streams tasks list --json``)."""
        out = dict(self.__dict__)
        for k in ("first_failed_at", "failed_at", "done_at"):
            out[k] = out[k].isoformat() if out[k] else None
        return out


class FailureLog:
    """The failure-log table (``streams_task_failures`` by default) in the application's
    database: PostgreSQL, or MySQL / MariaDB for a ``mysql://`` URL."""

    def __init__(self, settings: Settings, table: str = DEFAULT_TABLE) -> None:
        self.settings = settings
        self.table = table

    @property
    def _mysql(self) -> bool:
        return self.settings.database_dialect == "mysql"

    def _mysql_sql(self, template: str) -> str:
        """``template`` for MySQL: ``{}`` is the table's name, ``now()`` the current UTC time."""
        if not self.table.replace("_", "").isalnum():
            raise ConfigurationError(f"invalid failure-log table name {self.table!r}")
        return template.replace("{}", f"`{self.table}`").replace("now()", "CURRENT_TIMESTAMP(6)")

    def _run(self, conn: Any, template: str, params: Any = None) -> list[tuple]:
        """Run ``template`` (``{}``: the table) in the dialect of ``conn``; its rows."""
        if self._mysql:
            return db.query(conn, self._mysql_sql(template), params)
        return db.query(conn, sql.SQL(template).format(sql.Identifier(self.table)), params)  # type: ignore[arg-type]

    def migrate(self, conn: Any) -> None:
        """Create the table (idempotent) on a connection of :func:`streams.db.connect`."""
        if self._mysql:
            with db.transaction(conn):
                self._mysql_sql("")  # the name is checked
                db.query(conn, _MYSQL_DDL.format(table=self.table))
            return
        with db.transaction(conn):
            db.query(conn, sql.SQL(_DDL).format(table=sql.Identifier(self.table),  # type: ignore[arg-type]
                                                index=sql.Identifier(f"{self.table}_status")))

    def connect(self) -> Any:
        """An autocommit connection to the application's database (close it, or use ``with``)."""
        return closing(db.connect(self.settings, autocommit=True))

    def record(self, task: str, args: dict[str, Any], attempts: int, exc: BaseException) -> int:
        """Write a failed task; returns its id."""
        values = (task, json.dumps(args), attempts, type(exc).__name__, str(exc)[:2000])
        insert = "INSERT INTO {} (task, args, attempts, error_type, error_message) VALUES (%s, %s, %s, %s, %s)"
        with self.connect() as conn:
            if self._mysql:
                with conn.cursor() as cur:
                    cur.execute(self._mysql_sql(insert), values)
                    return int(cur.lastrowid)
            return int(self._run(conn, insert + " RETURNING id", values)[0][0])

    def list(self, status: str | None = "failed", task: str | None = None,
             ids: list[int] | None = None) -> list[TaskFailure]:
        """Rows, oldest first (``status=None``: every status)."""
        where: list[str] = []
        params: list[Any] = []
        if status:
            where.append("status = %s")
            params.append(status)
        if task:
            where.append("task = %s")
            params.append(task)
        if ids:
            where.append(f"id IN ({', '.join(['%s'] * len(ids))})")
            params.extend(ids)
        query = ("SELECT id, task, args, status, attempts, error_type, error_message, first_failed_at, failed_at, "
                 "reruns, done_at FROM {}" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id")
        with self.connect() as conn:
            return [self._failure(row) for row in self._run(conn, query, params)]

    def _failure(self, row: tuple) -> TaskFailure:
        if not self._mysql:
            return TaskFailure(*row)
        # MySQL: the arguments are JSON text, the times naive UTC
        fields = list(row)
        fields[2] = json.loads(fields[2])
        for i in (7, 8, 10):
            if fields[i] is not None:
                fields[i] = fields[i].replace(tzinfo=UTC)
        return TaskFailure(*fields)

    def mark_done(self, failure_id: int) -> None:
        with self.connect() as conn:
            self._run(conn, "UPDATE {} SET status = 'done', reruns = reruns + 1, done_at = now() WHERE id = %s",
                      (failure_id,))

    def mark_failed_again(self, failure_id: int, attempts: int, exc: BaseException) -> None:
        with self.connect() as conn:
            self._run(conn, "UPDATE {} SET attempts = attempts + %s, reruns = reruns + 1, error_type = %s, "
                            "error_message = %s, failed_at = now() WHERE id = %s",
                      (attempts, type(exc).__name__, str(exc)[:2000], failure_id))


class BackgroundTasks:
    """A registry of named tasks and a bounded thread pool that runs them with retries.

    ``policy`` decides attempts and backoff (:class:`~streams.RetryPolicy`; its
    ``permanent`` errors are not retried). Counters in :attr:`stats`:
    ``submitted``, ``succeeded``, ``retried``, ``failed`` (written to the failure
    log), ``unlogged`` (failed and the failure log could not be written either:
    logged at ERROR with the task's arguments).
    """

    def __init__(self, settings: Settings, *, max_workers: int = 4, max_pending: int = 1000,
                 policy: RetryPolicy | None = None, table: str = DEFAULT_TABLE,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if max_pending < max_workers:
            raise ValueError("max_pending must be at least max_workers")
        self.failure_log = FailureLog(settings, table)
        self.policy = policy or RetryPolicy(max_attempts=3, initial_backoff=0.2, max_backoff=5.0)
        self.max_workers = max_workers
        self.stats: Counter[str] = Counter()
        self._tasks: dict[str, Callable[..., Any]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._sleep = sleep

    # --- registry ---------------------------------------------------------------
    def task(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a function (called with the keyword arguments given to :meth:`submit`)."""
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._tasks:
                raise ConfigurationError(f"background task {name!r} is registered twice")
            self._tasks[name] = fn
            return fn
        return register

    def function(self, name: str) -> Callable[..., Any]:
        try:
            return self._tasks[name]
        except KeyError:
            raise ConfigurationError(f"no background task named {name!r} "
                                     f"(registered: {', '.join(sorted(self._tasks)) or 'none'})") from None

    # --- running ----------------------------------------------------------------
    def submit(self, task: str, /, **kwargs: Any) -> Future:
        """Run ``task`` in the pool (call it after the commit). Blocks while
        ``max_pending`` tasks are in flight. The future's result is ``True`` if it
        succeeded, ``False`` if it ended in the failure log."""
        name = task
        fn = self.function(name)
        json.dumps(kwargs)  # refuse now what the failure log could not store later
        self._slots.acquire()
        try:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="streams-task")
                future = self._pool.submit(self._run_logged, name, fn, kwargs, tracing.current_span_context())
        except BaseException:
            self._slots.release()
            raise
        self.stats["submitted"] += 1
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def _run_logged(self, name: str, fn: Callable[..., Any], kwargs: dict[str, Any],
                    submitted_in: Any = None) -> bool:
        """Run a task in a ``task <name>`` span, child of the span it was submitted in (tracing on)."""
        with tracing.task_span(f"task {name}", submitted_in, task=name) as span:
            attempts, exc = self._attempt(name, fn, kwargs)
            if exc is not None:
                tracing.end_failed(span, exc, attempts=attempts)
        if exc is None:
            return True
        try:
            failure_id = self.failure_log.record(name, kwargs, attempts, exc)
        except Exception as log_exc:  # noqa: BLE001 - the last resort is the log line below
            self.stats["unlogged"] += 1
            log.error("background task %s failed after %d attempt(s) (%s: %s) and the failure log could not "
                      "be written (%s); its arguments: %s", name, attempts, type(exc).__name__, exc,
                      log_exc, json.dumps(kwargs))
            return False
        self.stats["failed"] += 1
        log.warning("background task %s failed after %d attempt(s): %s: %s (failure log id %d)",
                    name, attempts, type(exc).__name__, exc, failure_id)
        return False

    def _attempt(self, name: str, fn: Callable[..., Any],
                 kwargs: dict[str, Any]) -> tuple[int, BaseException | None]:
        """Run with the policy's retries: (attempts made, the last error or None)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                fn(**kwargs)
            except Exception as exc:  # noqa: BLE001 - classified by the policy
                tracing.record_failure(exc, attempt=attempt)
                if not self.policy.should_retry(exc, attempt):
                    return attempt, exc
                self.stats["retried"] += 1
                log.info("background task %s attempt %d failed (%s: %s), retrying", name, attempt,
                         type(exc).__name__, exc)
                self._sleep(self.policy.delay(attempt))
            else:
                self.stats["succeeded"] += 1
                return attempt, None

    def close(self, wait: bool = True) -> None:
        """Stop taking tasks; with ``wait``, finish what was submitted."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> "BackgroundTasks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the failure log --------------------------------------------------------
    def rerun(self, failure: TaskFailure) -> bool:
        """Run a logged failure again (with the policy's retries, in this thread);
        marks it ``done`` or records the new attempts and error."""
        fn = self.function(failure.task)
        with tracing.task_span(f"task {failure.task} rerun", None, task=failure.task, failure_id=failure.id) as span:
            attempts, exc = self._attempt(failure.task, fn, failure.args)
            if exc is not None:
                tracing.end_failed(span, exc, attempts=attempts)
        if exc is None:
            self.failure_log.mark_done(failure.id)
            return True
        self.failure_log.mark_failed_again(failure.id, attempts, exc)
        return False
