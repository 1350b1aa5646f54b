"""A signal that reaches a held thread between snapcore's steps.

A held thread that is let run (parked again after an injected call, or let
go to its own `svc` by restart.settle) with its own signal mask takes any
signal that arrived meanwhile: the kernel stops it in that signal's delivery
stop.  Held there, it can run no injected call (resuming it would drop the
signal) and the signal is delivered at its release.  Two kinds need no
holding, because the kernel's own handling can be reproduced exactly:

- a signal the process ignores is discarded, as the kernel would have done
  (untraced, it is not even queued: kernel/signal.c sig_ignored makes an
  exception for traced tasks only);
- a stop signal left to its default is suppressed and given back at the
  release (HeldThread.stops_taken), as during an injected call.

A SIGCONT cancels the stops sent before it, as the kernel does when it is
sent (prepare_signal): given back afterwards they would leave the process
stopped by signals its SIGCONT already answered.
"""

from __future__ import annotations

import signal

from snapcore.linux import procfs

STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


def absorbed(thread, sig: int) -> bool:
    """Take `sig`, which stopped `thread` (a HeldThread) in its delivery stop,
    without holding the thread for it: True when the caller resumes it with
    signal 0 and goes on; False when it must be delivered by the kernel."""
    if sig == signal.SIGCONT:
        thread.stops_taken.clear()
    what = procfs.disposition(thread.tid, sig)
    if what == "ignore":
        return True
    if what == "default" and sig in STOP_SIGNALS:
        thread.stops_taken.append(sig)
        return True
    return False
