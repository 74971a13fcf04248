"""Kill a writer at every line of its write path, for crash-consistency tests.

`line_count(fn, files)` runs `fn` once and counts the line events in the given source files (our
write paths plus the stdlib helpers they call). `crash_at(fn, n, files)` forks; the child runs `fn`
under a tracer that sends itself SIGKILL at the n-th such line: no `finally`, no atexit, exactly
what a preempted node or an OOM kill does to a process. The parent then inspects what is on disk.
(A kill cannot lose data that already reached the page cache; power loss is out of scope here and
is what the fsyncs in `suite.io` are for.)
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable


def _tracer(files: tuple[str, ...], on_line: Callable[[], None]):
    def trace(frame, event, arg):
        if frame.f_code.co_filename.endswith(files):
            if event == "line":
                on_line()
            return trace
        return None  # do not trace lines of other frames

    return trace


def line_count(fn: Callable[[], None], files: tuple[str, ...]) -> int:
    n = 0

    def tick():
        nonlocal n
        n += 1

    sys.settrace(_tracer(files, tick))
    try:
        fn()
    finally:
        sys.settrace(None)
    return n


def crash_at(fn: Callable[[], None], n: int, files: tuple[str, ...]) -> bool:
    """Run `fn` in a forked child killed at its n-th traced line; True if the kill happened."""
    pid = os.fork()
    if pid == 0:  # child
        count = 0

        def tick():
            nonlocal count
            count += 1
            if count == n:
                os.kill(os.getpid(), signal.SIGKILL)

        try:
            sys.settrace(_tracer(files, tick))
            fn()
            sys.settrace(None)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


WRITE_PATH = ("suite/io.py", "/shutil.py", "/tempfile.py")
