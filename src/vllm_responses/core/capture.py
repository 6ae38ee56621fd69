"""Captured streams (``VLLM_RESPONSES_CAPTURE_DIR``, a debugging aid): every response's frames
and the request that made it, written off the event loop and bounded.

One writer thread per directory does all the file work, in order, from a queue bounded in
bytes: the event loop only hands it data. A write that finds the queue full is dropped and
counted (the loop never waits on a disk); once the directory holds ``max_bytes``, capturing
stops, with one log line. A capture that lost a write ends as ``.sse.truncated``, one whose
client left as ``.sse.aborted``: a ``.sse`` file is always a whole stream. What was handed
over is in the file within the writer thread's next turn (files are unbuffered), so a reader
polling a file's size sees what the server produced.
"""

import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..common.logs import get_logger
from ..common.private import create, make_dir
from ..settings import DEFAULT_CAPTURE_MAX

logger = get_logger(__name__)

DEFAULT_MAX_BYTES = DEFAULT_CAPTURE_MAX
QUEUE_BYTES = 64 * 1024 * 1024


class Capture:
    """One response's frames on disk, through its directory's :class:`CaptureWriter`."""

    def __init__(self, writer: "CaptureWriter", path: Path) -> None:
        self.writer, self.path = writer, path
        self.lost = False  # a write was dropped: the file is not the whole stream
        self._file: BinaryIO | None = None
        writer.submit(self._open, 0, self)

    def write(self, data: bytes) -> None:
        self.writer.submit(lambda: self._write(data), len(data), self)

    def close(self, complete: bool) -> None:
        self.writer.submit(lambda: self._close(complete), 0, None)

    # -- on the writer thread -------------------------------------------------------------
    def _open(self) -> None:
        self._file = create(self.path)

    def _write(self, data: bytes) -> None:
        if self._file is None or self.lost:
            return
        if not self.writer.take(len(data)):
            self.lost = True
            return
        view = memoryview(data)
        while view:  # an unbuffered write may take less than all of it
            view = view[self._file.write(view) or 0 :]

    def _close(self, complete: bool) -> None:
        if self._file is None:
            return
        self._file.close()
        if not complete:
            self.path.rename(self.path.with_suffix(".sse.aborted"))
        elif self.lost:
            self.path.rename(self.path.with_suffix(".sse.truncated"))


class CaptureWriter:
    """The writer thread of one capture directory (started on first use)."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES, queue_bytes: int = QUEUE_BYTES) -> None:
        self.directory, self.max_bytes, self.queue_bytes = directory, max_bytes, queue_bytes
        self.dropped = 0  # writes dropped because the queue was full
        self.full = False  # the directory reached max_bytes: nothing more is written
        self._used: int | None = None  # bytes in the directory, counted once by the thread
        self._queue: deque[tuple[Callable[[], None], int]] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def capture(self, response_id: str) -> Capture | None:
        return None if self.full else Capture(self, self.directory / f"{response_id}.sse")

    def request(self, response_id: str, body: bytes) -> None:
        """The request body, written whole under a temporary name and then renamed (a reader
        never sees half of it)."""
        if self.full:
            return
        path = self.directory / f"{response_id}.request.json"

        def write() -> None:
            if self.take(len(body)):
                part = path.with_suffix(".json.part")
                with create(part) as f:
                    f.write(body)
                os.replace(part, path)

        self.submit(write, len(body), None)

    def submit(self, work: Callable[[], None], size: int, capture: Capture | None) -> None:
        """Queues ``work`` (never blocks); dropped and counted when the queue is full."""
        with self._cond:
            if self._stopping:
                return
            if size and self._queued + size > self.queue_bytes:
                self.dropped += 1
                if capture is not None:
                    capture.lost = True
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vllm-responses-capture", daemon=True)
                self._thread.start()
            self._queue.append((work, size))
            self._queued += size
            self._cond.notify()

    def take(self, size: int) -> bool:
        """On the thread: room for ``size`` more bytes in the directory? Logs once when not."""
        if self._used is None:
            self._used = _size_of(self.directory)
        if self.full or self._used + size > self.max_bytes:
            if not self.full:
                self.full = True
                logger.warning(
                    "capture directory %s reached %d bytes: capturing stops (VLLM_RESPONSES_CAPTURE_MAX_MB)",
                    self.directory,
                    self.max_bytes,
                )
            return False
        self._used += size
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Writes what is queued (up to ``timeout_s``), then ends the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        if self.dropped:
            logger.warning(
                "capture directory %s: %d writes dropped (the writer fell behind)", self.directory, self.dropped
            )

    def _run(self) -> None:
        try:
            make_dir(self.directory)
        except OSError as exc:  # each file's own error is then logged below
            logger.warning("capture directory %s: %s", self.directory, exc)
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                work, size = self._queue.popleft()
                self._queued -= size
            try:
                work()
            except OSError as exc:  # a debugging aid never takes the server down
                logger.warning("capture directory %s: %s", self.directory, exc)


def _size_of(directory: Path) -> int:
    try:
        return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())
    except OSError:
        return 0
