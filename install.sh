#!/bin/sh
# Install snapcore for root on a Debian or Ubuntu server.
#
# Its own virtualenv under /opt/snapcore: PEP 668 keeps pip out of the
# distribution's Python (externally-managed-environment), and pip itself is
# often absent.  The command goes into /usr/local/bin (on root's PATH), the
# manual page into /usr/local/share/man (on man's path).
# PREFIX, BINDIR and MANDIR override those places.
set -eu
cd "$(dirname "$0")"
PREFIX=${PREFIX:-/opt/snapcore}
BINDIR=${BINDIR:-/usr/local/bin}
MANDIR=${MANDIR:-/usr/local/share/man}

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
fi
python3 -m venv "$PREFIX"
# With the stacks extra: pystack, the reader of CPython stacks (wheels for
# x86_64 and aarch64 glibc).  jhsdb comes with the JDK the target runs, delve from apt.
"$PREFIX/bin/python" -m pip install -q --disable-pip-version-check '.[stacks]'
# python-ptrace installs its demo programs gdb.py and strace.py as scripts:
# a `gdb.py` beside snapcore is not gdb, and nothing of snapcore's uses them.
rm -f "$PREFIX/bin/gdb.py" "$PREFIX/bin/strace.py"
mkdir -p "$BINDIR" "$MANDIR/man1"
# Not a link: a Ctrl-C must never show Python's traceback.  The interpreter
# starts with the stop signals ignored (it then leaves SIGINT alone; one
# pressed in these milliseconds is lost, before anything is touched) and with
# -S, so that bin/snapcore catches them before site loads anything.
rm -f "$BINDIR/snapcore"
printf '#!/bin/sh\ntrap "" INT TERM HUP\nexec "%s/bin/python3" -S "%s/bin/snapcore" "$@"\n' \
    "$PREFIX" "$PREFIX" > "$BINDIR/snapcore"
chmod 0755 "$BINDIR/snapcore"
cp man/snapcore.1 "$MANDIR/man1/snapcore.1"
chmod 0644 "$MANDIR/man1/snapcore.1"
echo "snapcore installed: $BINDIR/snapcore, man snapcore"
case ":${PATH:-}:" in
    *":$BINDIR:"*) ;;
    *) echo "install.sh: warning: $BINDIR is not on PATH: run $BINDIR/snapcore by its full path" >&2 ;;
esac
