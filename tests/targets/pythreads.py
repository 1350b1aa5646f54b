"""A CPython target for snapcore's stack readers: run by the distribution's
python3 as `python3 pythreads.py MODE REPORT_FILE`.

MODE threads: four named threads, each in a state a reader must tell apart:
  sleeper      time.sleep (C: clock_nanosleep with the GIL released)
  lock_waiter  threading.Lock.acquire on a lock the main thread holds
  spinner      a pure-Python loop (holds the GIL between switches)
  hasher       hashlib.sha256 of 64 MiB over and over (C, GIL released)
Once all four are in place the main thread writes REPORT_FILE.frames: what
sys._current_frames() says of every thread at that moment (native tid ->
name and frames, innermost first), the program's own reading to compare a
reader's with.
MODE hot: one thread spends about 90 % of its time in hot() and 10 % in
cold(), in a loop, for the sampling profiler's test.

Like the C targets (report.h): every violation is a "VIOLATION ..." line
appended to REPORT_FILE by path, a heartbeat "hb PID" after each round of
the main loop, whose sleep is libc's nanosleep called directly (ctypes), so
that an EINTR or an early return is seen (time.sleep would retry it, PEP 475).
The computing threads run at nice 19: the machine is shared.
"""

import ctypes
import hashlib
import json
import os
import signal
import sys
import threading
import time

REPORT = sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def report(line):
    with open(REPORT, "a") as f:
        f.write(line + "\n")


def on_signal(sig, _frame):
    report(f"VIOLATION signal {sig} received by {os.getpid()}")


def checked_sleep(seconds):
    ts = Timespec(int(seconds), int(seconds % 1 * 1e9))
    start = time.monotonic()
    if libc.nanosleep(ctypes.byref(ts), None) != 0:
        report(f"VIOLATION nanosleep: {os.strerror(ctypes.get_errno())}")
    elif time.monotonic() - start < seconds - 0.001:
        report(f"VIOLATION nanosleep returned after {time.monotonic() - start:.3f} s")


def after_each_round():
    try:
        reaped, _ = os.waitpid(-1, os.WNOHANG)
        if reaped > 0:
            report(f"VIOLATION reaped child {reaped}")
    except ChildProcessError:
        pass
    report(f"hb {os.getpid()}")


held = threading.Lock()
placed = threading.Semaphore(0)


def sleeper():
    placed.release()
    while True:
        time.sleep(3600)  # LOOP sleeper


def lock_waiter():
    placed.release()
    held.acquire()  # LOOP lock_waiter


def spin_step(x):
    for i in range(1000):  # LOOP spin_step
        x = (x * 31 + i) % 1000003  # LOOP spin_step
    return x  # LOOP spin_step


def spinner():
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    placed.release()
    x = 0
    while True:  # LOOP spinner
        x = spin_step(x)  # LOOP spinner


def hasher():
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    data = b"x" * (64 << 20)
    placed.release()
    while True:  # LOOP hasher
        hashlib.sha256(data).digest()  # LOOP hasher


def hot(n):
    # LOOP hot: about 90 % of each round
    end = time.monotonic() + 0.00907 * n
    while time.monotonic() < end:  # LOOP hot
        pass  # LOOP hot


def cold(n):
    end = time.monotonic() + 0.00101 * n
    while time.monotonic() < end:  # LOOP cold
        pass  # LOOP cold


def worker():
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    placed.release()
    while True:
        hot(10)
        cold(10)


def current_frames(names):
    """native tid -> {name, frames: [[function, file, line], ...] innermost first}."""
    idents = {t.ident: t for t in threading.enumerate()}
    out = {}
    for ident, frame in sys._current_frames().items():
        frames = []
        while frame is not None:
            frames.append([frame.f_code.co_name, frame.f_code.co_filename, frame.f_lineno])
            frame = frame.f_back
        thread = idents[ident]
        out[str(thread.native_id)] = {"name": thread.name, "frames": frames}
    return out


def main():
    for sig in (signal.SIGCHLD, signal.SIGABRT, signal.SIGUSR1, signal.SIGURG):
        signal.signal(sig, on_signal)
    mode = sys.argv[1]
    held.acquire()
    if mode == "threads":
        workers = (sleeper, lock_waiter, spinner, hasher)
    elif mode == "hot":
        workers = (worker,)
    else:
        sys.exit(f"unknown mode {mode}")
    for function in workers:
        threading.Thread(target=function, name=function.__name__, daemon=True).start()
    for _ in workers:
        placed.acquire()
    time.sleep(0.3)  # each in its loop, blocked or computing
    with open(REPORT + ".frames", "w") as f:
        json.dump(current_frames(workers), f)
    print("ready", flush=True)
    while True:
        checked_sleep(0.2)
        after_each_round()


main()
