"""The signals that end a run as 'stopped' instead of killing it mid-write.

SIGINT (Ctrl-C), SIGTERM (what SLURM, Kubernetes and systemd send before they kill: at a time
limit, on preemption, on shutdown) and SIGHUP (a closed terminal or ssh session). The first
one sets the run's stop flag: the run ends at its next training step with status 'stopped',
its last finished epoch's resume point kept, and the same command resumes it (an evaluation
under way finishes first). A second signal raises KeyboardInterrupt, for a step that does not
end. Python delivers signals to the main thread only, so a run trained in another thread (the
panel's) is covered by whoever owns the main thread: see ui/panel.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[list[signal.Signals]]:
    """While inside: the first of STOP_SIGNALS sets `stop`, a second raises
    KeyboardInterrupt; yields the signals received so far. Does nothing outside the main
    thread, where signals never arrive. The previous handlers are put back on leaving."""
    received: list[signal.Signals] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop_at_next_step(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt  # the second signal: no more waiting for a step's end
        received.append(signal.Signals(signum))
        stop.set()

    previous = {s: signal.signal(s, stop_at_next_step) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


KERNEL_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # a kernel's SIGINT is Jupyter's interrupt
STOP_GRACE_S = 30.0  # how long a dying kernel waits for its run to end 'stopped'


def stop_thread_on_signals(
    run: Callable[[], tuple[threading.Event, threading.Thread | None]],
    signals: tuple[signal.Signals, ...] = KERNEL_SIGNALS,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """For a process whose runs train in another thread (a notebook kernel, for the panel):
    from now on, each of `signals` first stops the run that `run()` names (its stop flag and
    its thread), waits up to `grace_s` for it to end 'stopped', then does what the signal did
    before, so a kernel that is told to end still ends. Call from the main thread (a no-op
    elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in signals:
        previous = signal.getsignal(s)

        def stop_then_go_on(signum: int, frame: Any, previous: Any = previous) -> None:
            stop, thread = run()
            if thread is not None and thread.is_alive():
                stop.set()
                thread.join(grace_s)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # the default: end as the signal asks
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(s, stop_then_go_on)
