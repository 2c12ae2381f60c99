"""A function in a daemon thread, with a Future of its result."""

import threading
from concurrent.futures import Future

__all__ = ["in_thread"]


def in_thread(fn, *, name):
    """``fn()`` in a daemon thread; returns a ``concurrent.futures.Future`` of its result.

    A daemon thread, so that an interrupted command ends at once instead of waiting for it: what
    it may be writing is written atomically (a half-done write leaves only a temporary file,
    which the store removes at its next save or listing).
    """
    future = Future()

    def work():
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to whoever asks for the result
                future.set_exception(exc)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future
