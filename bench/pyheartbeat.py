"""bench/pystacks.py's target: a CPython heartbeat in the main thread (its
longest gap between iterations and how many it did, reset on SIGUSR1, which
it answers on stdout) beside threads that sleep, wait on a lock and hash in C
with the GIL released, so that a reader has several threads to walk."""

import hashlib
import signal
import threading
import time

held = threading.Lock()
held.acquire()


def sleeper():
    while True:
        time.sleep(0.5)


def waiter():
    held.acquire()


def hasher():
    data = bytes(1 << 20)
    while True:
        hashlib.sha256(data).digest()  # releases the GIL for large inputs
        time.sleep(0.01)


for work in (sleeper, sleeper, waiter, hasher):
    threading.Thread(target=work, daemon=True).start()

state = {"gap": 0.0, "count": 0, "since": time.monotonic(), "asked": False}


def asked(signum, frame):
    state["asked"] = True


signal.signal(signal.SIGUSR1, asked)
print("ready", flush=True)
last = time.monotonic()
while True:
    now = time.monotonic()
    if now - last > state["gap"]:
        state["gap"] = now - last
    state["count"] += 1
    last = now
    if state["asked"]:
        state["asked"] = False
        print(f"{state['gap']:.6f} {state['count']} {now - state['since']:.6f}", flush=True)
        state.update(gap=0.0, count=0, since=time.monotonic())
        last = time.monotonic()
