"""What a preflight check says: a verdict (ok, warn, refuse), a reason and a
fix; which checks exist, the exit code of each refusal, and which ones the
operator may override.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from snapcore.errors import ExitCode, SnapcoreError, Stage

if TYPE_CHECKING:  # the command layer imports this module for the check names alone
    from snapcore.engine.plan import Plan

OK, WARN, REFUSE = "ok", "warn", "refuse"


# name -> (exit code of its refusal, whether --force may override it)
CHECKS = {
    "permission": (ExitCode.PERMISSION, False),
    "tracer": (ExitCode.BUSY, False),
    "state": (ExitCode.UNSUPPORTED, False),
    "seccomp": (ExitCode.UNSUPPORTED, False),
    "userfaultfd": (ExitCode.UNSUPPORTED, False),
    "dumpable": (ExitCode.CORE_NOT_WRITTEN, True),
    "writer": (ExitCode.USAGE, False),
    "core-pattern": (ExitCode.CORE_NOT_WRITTEN, False),
    "core-limit": (ExitCode.CORE_NOT_WRITTEN, False),
    "output-dir": (ExitCode.OUTPUT, True),
    "staging": (ExitCode.OUTPUT, False),
    "disk": (ExitCode.OUTPUT, True),
    "memory": (ExitCode.MEMORY, True),
    "tasks": (ExitCode.LIMITS, True),
    "rate-limit": (ExitCode.RATE_LIMITED, True),
}


FORCEABLE = tuple(name for name, (_, forceable) in CHECKS.items() if forceable)


@dataclass
class Check:
    name: str
    verdict: str
    reason: str
    fix: str = ""
    setting: str = ""  # the option the fix is about, by name (cli/render.py: its flag)

    @property
    def exit_code(self) -> ExitCode:
        return CHECKS[self.name][0]

    @property
    def forceable(self) -> bool:
        return CHECKS[self.name][1]


@dataclass
class Preflight:
    """The preflight's outcome: every verdict, and the plan they came to."""

    plan: Plan
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, verdict: str, reason: str, fix: str = "",
            setting: str = "") -> None:
        self.checks.append(Check(name, verdict, reason, fix, setting))

    def refusals(self, forced=()) -> list[Check]:
        return [c for c in self.checks
                if c.verdict == REFUSE and not (c.forceable and c.name in forced)]

    def as_dicts(self) -> list[dict]:
        return [dict(asdict(c), forceable=c.forceable) for c in self.checks]


class Refused(SnapcoreError):
    """A preflight check said no; its exit code is the check's."""

    def __init__(self, check: Check, pid: int):
        super().__init__(check.reason, check.fix, pid=pid, stage=Stage.PREFLIGHT,
                         setting=check.setting)
        self.exit_code = check.exit_code
        self.check = check.name if check.forceable else ""
        self.check_name = check.name
