"""The web UI's job queue: bounded, one job at a time on the device, per-step progress, cancel within a step.

    queue = JobQueue(run, max_queue=8)       # run(job) does the work, calling job.report(step, total)
    job = queue.submit(payload, owner="session-id")   # QueueFull beyond max_queue waiting jobs
    queue.position(job)                      # 1, 2, ... while waiting; 0 while running
    queue.cancel(job.id)                     # waiting: dropped at once; running: stops after the current step

One worker thread runs the jobs in order (a device runs one generation at a time; a second at once would
only share its memory and compute). ``job.report`` is the ``progress`` callback of ``Animator.generate``: it
records the step and raises ``api.Cancelled`` once a cancel was asked for, so the generation ends within one
denoising step. Finished jobs are kept for a while (``keep``) so clients can read their outcome, then dropped:
memory stays bounded however long the server runs.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..api import Cancelled
from ..errors import UserInputError

logger = logging.getLogger(__name__)

WAITING, RUNNING, DONE, FAILED, CANCELLED = "waiting", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class QueueFull(Exception):
    """More jobs are waiting than ``max_queue``; the message is shown to the user as is."""


@dataclass
class Job:
    id: int
    payload: Any
    owner: str | None = None  # the browser session that submitted it (its cancel button cancels it)
    state: str = WAITING
    step: int = 0
    total: int = 0
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    first_step_at: float | None = None  # steps are timed from the end of the first one: the model load and the
    first_step: int = 0  # text encoding before it are not steps
    finished: float | None = None
    result: Any = None
    error: str | None = None  # one line for the user (UserInputError rendered by the caller's table)
    exception: BaseException | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def report(self, step: int, total: int) -> None:
        """``progress(step, total)`` for ``Animator.generate``: records the step; raises ``Cancelled`` on request."""
        if self.first_step_at is None:
            self.first_step_at, self.first_step = time.monotonic(), step
        self.step, self.total = step, total
        if self.cancel_requested.is_set():
            raise Cancelled(f"job {self.id} cancelled after step {step} of {total}")

    def eta(self) -> float | None:
        """Seconds left, from the mean time per step so far (None before the first step)."""
        if self.first_step_at is None or self.step <= self.first_step or not self.total:
            return None
        per_step = (time.monotonic() - self.first_step_at) / (self.step - self.first_step)
        return per_step * (self.total - self.step)


class JobQueue:
    """Bounded FIFO of jobs run by one worker thread with ``run(job) -> result``."""

    def __init__(self, run: Callable[[Job], Any], max_queue: int = 8, keep: int = 64,
                 describe_error: Callable[[BaseException], str] = str):
        if max_queue < 1:
            raise UserInputError("must be at least 1", field="max_queue", value=max_queue)
        self._run, self.max_queue, self._keep, self._describe = run, max_queue, keep, describe_error
        self._ids = itertools.count(1)
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[int, Job] = OrderedDict()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="animatediff-ui-jobs", daemon=True)
        self._worker.start()

    # ---- clients ---------------------------------------------------------------------------------
    def submit(self, payload: Any, owner: str | None = None) -> Job:
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"queue full: {len(self._waiting)} jobs are waiting (the limit is {self.max_queue}); "
                                "try again when one has finished")
            job = Job(next(self._ids), payload, owner)
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._lock.notify_all()
        logger.info("job %d queued (%d waiting)", job.id, len(self._waiting))
        return job

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """1-based place among the waiting jobs; 0 when running or finished."""
        with self._lock:
            try:
                return self._waiting.index(job) + 1
            except ValueError:
                return 0

    def cancel(self, job_id: int) -> bool:
        """Cancel a waiting job (dropped now) or the running one (stops after its current step)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state in FINISHED:
                return False
            job.cancel_requested.set()
            if job.state == WAITING:
                self._waiting.remove(job)
                self._finish(job, CANCELLED)
            logger.info("job %d: cancel requested", job.id)
            return True

    def cancel_owner(self, owner: str) -> int:
        """Cancel every unfinished job of one session (the page's cancel button); returns how many."""
        with self._lock:
            ids = [j.id for j in self._jobs.values() if j.owner == owner and j.state not in FINISHED]
        return sum(self.cancel(i) for i in ids)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        return job.done.wait(timeout)

    def stats(self) -> dict:
        with self._lock:
            return {"waiting": len(self._waiting), "running": self._running.id if self._running else None,
                    "kept": len(self._jobs)}

    def close(self, timeout: float = 10) -> None:
        """Cancel everything and stop the worker."""
        with self._lock:
            self._closed = True
            ids = list(self._jobs)
            self._lock.notify_all()
        for job_id in ids:
            self.cancel(job_id)
        self._worker.join(timeout)

    # ---- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed and not self._waiting:
                    return
                job = self._waiting.popleft()
                job.state, job.started, self._running = RUNNING, time.monotonic(), job
            state = DONE
            try:
                job.result = self._run(job)
            except Cancelled:
                state = CANCELLED
            except BaseException as e:  # noqa: BLE001 - the worker must survive any job
                state, job.exception, job.error = FAILED, e, self._describe(e)
                if not isinstance(e, UserInputError):
                    logger.exception("job %d failed", job.id)
            with self._lock:
                self._running = None
                self._finish(job, CANCELLED if state == DONE and job.cancel_requested.is_set() and job.result is None else state)

    def _finish(self, job: Job, state: str) -> None:
        job.state, job.finished = state, time.monotonic()
        job.done.set()
        logger.info("job %d %s", job.id, state)

    def _forget_old(self) -> None:
        """Drop the oldest finished jobs beyond ``keep`` (called under the lock)."""
        finished = [i for i, j in self._jobs.items() if j.state in FINISHED]
        for job_id in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[job_id]
