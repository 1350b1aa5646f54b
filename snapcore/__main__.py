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


def run():
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _before_start)
    from snapcore.cli import main
    main()


if __name__ == "__main__":
    run()
