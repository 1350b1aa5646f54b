"""Entry point: `python -m snapcore` and the `snapcore` command.

Stop requests are caught before the command layer is even imported (rich,
click and psutil take a few hundred milliseconds to load): until then
nothing has been touched, so a Ctrl-C simply ends snapcore with exit 130.
"""

import os
import signal
import sys


def _before_start(signum, frame):
    sys.stderr.write("snapcore: interrupted before it started; nothing was touched\n")
    sys.stderr.flush()
    os._exit(130)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run():
    for signum in STOP_SIGNALS:
        signal.signal(signum, _before_start)
    try:
        from snapcore.cli import main
        main()
    finally:
        # The work is done and the exit code says how it went: a stop request
        # now must not turn it into death by signal while the interpreter
        # shuts down (it restores the default handlers first).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


if __name__ == "__main__":
    run()
