"""One exception tree for the engine; each error knows its exit code, pid and stage.

An error is one line: the problem, then the fix (`SnapcoreError.one_line`,
the only place that joins them).  The command layer gives it the fix as
the operator acts on it: the flag of its setting, its override
(cli/render.py `error_line`).

These are what a failure means for a snapshot, which the engine decides:
linux/ raises errors of its own for what the kernel answered (errno-level:
linux/ptrace.py's PtraceFailed, TaskGone, NotPermitted and the waits'),
and engine/kernelerrors.py turns them into these.  linux/ still raises a
few of these itself: its refusals of a target (seccomp.Denied: filters
that would refuse an injected call; rseq: an abort handler with the wrong
signature), which are snapcore's judgement, not the kernel's failure, and
procfs's reads of /proc.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of the snapcore command (listed in README.md and man/snapcore.1)."""

    OK = 0
    ERROR = 1  # unexpected failure inside snapcore
    USAGE = 2  # bad command line (not a pid, unknown option)
    NO_SUCH_PROCESS = 3  # the target does not exist or exited
    PERMISSION = 4  # not allowed to trace the target
    BUSY = 5  # the target is already traced by another process
    UNSUPPORTED = 6  # a target snapcore refuses to touch (zombie, 32-bit, stopped, seccomp...)
    TIMEOUT = 7  # a thread of the target did not stop in time (uninterruptible sleep)
    CORE_NOT_WRITTEN = 8  # the kernel wrote no core (RLIMIT_CORE, dumpable, disk)
    CORE_PIPED = 9  # core_pattern hands cores to a program: the core is there, not here
    OUTPUT = 10  # the output directory cannot be created, written or has no room
    MEMORY = 11  # not enough memory headroom for the copy-on-write child
    RATE_LIMITED = 12  # too many snapshots of this program in the last hour
    LIMITS = 13  # the snapshot's tasks would take the target's room under its task limits
    TOOL = 14  # a tool snapcore runs (gdb, for stacks) is missing or failed
    WATCH_ENDED = 15  # watch: the process exited before any condition fired
    INTERRUPTED = 130  # Ctrl-C or SIGTERM; the target was released first


class Stage(str, enum.Enum):
    """Where in a snapshot an error happened (the `stage` of --json errors)."""

    USAGE = "usage"  # the command line
    PREFLIGHT = "preflight"  # the checks, before the target is touched
    CAPTURE = "capture"  # holding the target's threads
    INJECT = "inject"  # a syscall run in a held thread
    FORK = "fork"  # making the snapshot child
    CHILD = "child"  # making the child safe
    DUMP = "dump"  # the kernel writing the core
    CORE = "core"  # finding, checking and storing the core
    REAP = "reap"  # the fork thread reaping what it made, and leaving
    COMPRESS = "compress"
    STACKS = "stacks"
    WATCH = "watch"
    INTERRUPT = "interrupt"  # Ctrl-C, SIGTERM, SIGHUP
    INTERNAL = "internal"  # a bug


# Where in a hint its setting is named (see SnapcoreError): "snapshot without
# {setting}" reads "snapshot without --compress" on the command line.
SETTING = "{setting}"


class SnapcoreError(Exception):
    """Base of every error the engine raises.

    message: what went wrong, one line.  hint: what the operator can do about it.
    stage: where in the snapshot it happened (preflight, capture, fork, release,
    child, dump, reap, core).  pid: the target.  setting: the option the hint
    is about, by its name; the hint says SETTING where its words name it (a
    caller names it as its interface sets it: the command line, by its flag),
    else the caller adds it.
    """

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, hint: str = "", *, pid: int | None = None,
                 stage: Stage | str = "", setting: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.pid = pid
        self.stage = stage
        self.setting = setting  # the option that would change the outcome, by its name

    # The name of the check the operator may override for this error, if any.
    # The engine names settings and checks, never command-line flags: the
    # command layer says which flag sets them (cli/render.py).
    check = ""

    def one_line(self, hint: str | None = None) -> str:
        """The error as one line: the message, then the hint, or `hint` when
        the caller renders it (cli/render.py: with the flags of the command
        line).  Unrendered, SETTING in the hint is the setting's name."""
        if hint is None:
            hint = self.hint.replace(SETTING, self.setting)
        return f"{self.message}: {hint}" if hint else self.message

    def as_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "pid": self.pid,
            "stage": self.stage.value if isinstance(self.stage, Stage) else self.stage,
            "setting": self.setting or None,
            "override": self.check or None,
            "exit_code": int(self.exit_code),
        }


class BadInput(SnapcoreError):
    exit_code = ExitCode.USAGE


class NoSuchProcess(SnapcoreError):
    exit_code = ExitCode.NO_SUCH_PROCESS


class TargetReplaced(NoSuchProcess):
    """The target exec'd a new program (or exited) since it was checked: the
    process snapcore checked is gone, whatever else went on."""


class PermissionDenied(SnapcoreError):
    exit_code = ExitCode.PERMISSION


class AlreadyTraced(SnapcoreError):
    exit_code = ExitCode.BUSY


class Unsupported(SnapcoreError):
    exit_code = ExitCode.UNSUPPORTED


class StopTimeout(SnapcoreError):
    exit_code = ExitCode.TIMEOUT


class CoreNotWritten(SnapcoreError):
    exit_code = ExitCode.CORE_NOT_WRITTEN


class NotDumpable(CoreNotWritten):
    """The process chose to keep its memory out of cores; --force dumpable overrides."""

    check = "dumpable"


class OutputError(SnapcoreError):
    exit_code = ExitCode.OUTPUT


class Interrupted(SnapcoreError):
    exit_code = ExitCode.INTERRUPTED


class ToolError(SnapcoreError):
    exit_code = ExitCode.TOOL


class InternalError(SnapcoreError):
    exit_code = ExitCode.ERROR
