"""The inspection page's one worker thread: requests queue jobs and return at once; only this thread
runs the model, one job after the other, so the page never waits on a request and the model is
never run twice at once. It also keeps what the page shows of its work: the stage of the running
job and the recent notices (a failed job's message among them)."""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from ..errors import UserError

log = logging.getLogger(__name__)

NOTICES_KEPT = 20


class Worker:
    """Runs queued jobs in order on one thread. A job that raises does not end the thread: its
    message becomes a notice (a ``UserError``'s own words; any other error is logged in full)."""

    def __init__(self, name: str = "dhrclip-inspection") -> None:
        self._lock = threading.Lock()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._pending = 0              # jobs queued or running
        self._stopping = False
        self._stage = ""
        self._notices: list[dict] = []
        self._notice_seq = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End once the running job is over (queued ones are dropped)."""
        with self._lock:
            self._stopping = True
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(1.0)
            if self._thread.is_alive():
                log.info("waiting for the running batch to finish")
                self._thread.join()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._pending += 1
        self._jobs.put(job)

    def stage(self, text: str) -> None:
        """What the running job is doing, as the page shows it."""
        with self._lock:
            self._stage = text

    def notice(self, text: str) -> None:
        with self._lock:
            self._notice_seq += 1
            self._notices = [*self._notices[-(NOTICES_KEPT - 1):], {"seq": self._notice_seq, "text": text}]

    def status(self) -> dict:
        """The running job's stage, whether any job is queued or running, and the recent notices."""
        with self._lock:
            return {"stage": self._stage, "working": self._pending > 0, "notices": list(self._notices)}

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                with self._lock:
                    stopping = self._stopping
                if not stopping:
                    job()
            except UserError as exc:
                self.notice(str(exc))
            except Exception as exc:  # a bug must not end the worker: the page would wait forever
                log.exception("inspection job failed")
                self.notice(f"internal error ({type(exc).__name__}: {exc}); see the server's log")
            finally:
                with self._lock:
                    self._stage = ""
                    self._pending -= 1  # after any job this one queued was counted: no idle moment between
