"""Would the target's seccomp filters let snapcore's injected syscalls through?

An injected syscall passes the target's filters like any other: a filter that
answers KILL kills the production process.  snapcore reads the filters
(PTRACE_SECCOMP_GET_FILTER) and runs each syscall it will inject through this
interpreter of classic BPF over `struct seccomp_data`, the way the kernel does
(kernel/seccomp.c: every filter runs, the most restrictive action wins).
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass

from snapcore.errors import Stage, Unsupported
from snapcore.linux.arch import NR, SYSCALL_INSN

# Actions (include/uapi/linux/seccomp.h), most restrictive first.
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
RET_ACTION_FULL = 0xFFFF0000

ACTION_NAMES = {
    RET_KILL_PROCESS: "KILL_PROCESS", RET_KILL_THREAD: "KILL_THREAD", RET_TRAP: "TRAP",
    RET_ERRNO: "ERRNO", RET_USER_NOTIF: "USER_NOTIF", RET_TRACE: "TRACE", RET_LOG: "LOG",
    RET_ALLOW: "ALLOW",
}
HARMLESS = (RET_ALLOW, RET_LOG)  # the syscall runs

SECCOMP_DATA_SIZE = 64  # nr, arch, instruction_pointer, args[6]

# BPF instruction fields (include/uapi/linux/bpf_common.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int


Program = list[Insn]


def parse(raw: bytes) -> Program:
    """struct sock_filter[]: u16 code, u8 jt, u8 jf, u32 k."""
    return [Insn(*struct.unpack_from("<HBBI", raw, i)) for i in range(0, len(raw), 8)]


def seccomp_data(nr: int, arch: int, ip: int, args: tuple[int, ...]) -> bytes:
    args = tuple(a & 0xFFFFFFFFFFFFFFFF for a in args) + (0,) * (6 - len(args))
    return struct.pack("<iIQ6Q", nr, arch, ip, *args)


class FilterError(Exception):
    """A program the kernel would have rejected, or one this interpreter cannot run."""


def run(program: Program, data: bytes) -> int:
    """Run one filter over one seccomp_data; return its 32-bit result."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    for _ in range(4096 + 1):  # cBPF only jumps forward; this bounds a broken program
        if pc >= len(program):
            raise FilterError("filter ran off its end")
        ins = program[pc]
        pc += 1
        cls = ins.code & 0x07
        if cls == LD:
            if ins.code & 0xE0 == ABS:
                if ins.code & 0x18 != W or ins.k % 4 or ins.k + 4 > SECCOMP_DATA_SIZE:
                    raise FilterError(f"bad load at offset {ins.k}")
                a = struct.unpack_from("<I", data, ins.k)[0]
            else:
                a = _load(ins, mem)
        elif cls == LDX:
            x = _load(ins, mem)
        elif cls == ST:
            mem[ins.k & 15] = a
        elif cls == STX:
            mem[ins.k & 15] = x
        elif cls == ALU:
            a = _alu(ins.code & 0xF0, a, x if ins.code & X else ins.k)
        elif cls == JMP:
            op = ins.code & 0xF0
            if op == JA:
                pc += ins.k
                continue
            operand = x if ins.code & X else ins.k
            if op == JEQ:
                taken = a == operand
            elif op == JGT:
                taken = a > operand
            elif op == JGE:
                taken = a >= operand
            elif op == JSET:
                taken = bool(a & operand)
            else:
                raise FilterError(f"unsupported jump 0x{ins.code:x}")
            pc += ins.jt if taken else ins.jf
        elif cls == RET:
            return (a if ins.code & 0x18 == RET_A else ins.k) & _U32
        else:  # MISC
            if ins.code & 0xF8 == TAX:
                x = a
            elif ins.code & 0xF8 == TXA:
                a = x
            else:
                raise FilterError(f"unsupported instruction 0x{ins.code:x}")
    raise FilterError("filter did not return")


def _load(ins: Insn, mem: list[int]) -> int:
    """The value an LD or LDX instruction loads, other than from seccomp_data."""
    mode = ins.code & 0xE0
    if mode == IMM:
        return ins.k
    if mode == MEM:
        return mem[ins.k & 15]
    if mode == LEN:
        return SECCOMP_DATA_SIZE
    raise FilterError(f"unsupported load 0x{ins.code:x}")


def _alu(op: int, a: int, v: int) -> int:
    if op == ADD:
        return (a + v) & _U32
    if op == SUB:
        return (a - v) & _U32
    if op == MUL:
        return (a * v) & _U32
    if op == DIV:
        return a // v if v else 0
    if op == MOD:
        return a % v if v else 0
    if op == OR:
        return a | v
    if op == AND:
        return a & v
    if op == XOR:
        return a ^ v
    if op == LSH:
        return (a << v) & _U32 if v < 32 else 0
    if op == RSH:
        return a >> v if v < 32 else 0
    if op == NEG:
        return (-a) & _U32
    raise FilterError(f"unsupported ALU op 0x{op:x}")


def action(ret: int) -> int:
    return ret & RET_ACTION_FULL


def _restrictiveness(ret: int) -> int:
    # The kernel compares actions as signed 32-bit values: KILL_PROCESS
    # (0x80000000) is the most negative, ALLOW the largest.
    value = action(ret)
    return value - (1 << 32) if value & 0x80000000 else value


def verdict(filters: list[Program], data: bytes) -> int:
    """The action the kernel takes for this syscall: the most restrictive of all filters."""
    results = [run(f, data) for f in filters]
    return min(results, key=_restrictiveness) if results else RET_ALLOW


def describe(ret: int) -> str:
    act = action(ret)
    name = ACTION_NAMES.get(act, f"0x{act:08x}")
    if act == RET_ERRNO:
        return f"ERRNO({ret & 0xFFFF})"
    return name


class Guard:
    """Checks each injected syscall against the target's filters just before it
    runs, with the instruction address and arguments it really has (a filter
    may look at both).  The fork thread and the snapshot child inherit the
    runner's filters (kernel/fork.c: copy_seccomp), so their calls are
    checked the same way, each task with its own Guard (`inherited`): `task`
    names who runs the calls it is asked about."""

    def __init__(self, filters: list[Program], audit_arch: int, task: str = "target"):
        self.filters = filters
        self.audit_arch = audit_arch
        self.task = task

    def inherited(self, task: str) -> "Guard":
        """The same filters, for task `task` that this one's task makes."""
        made = copy.copy(self)
        made.task = task
        return made

    def allows(self, nr: int, args: tuple[int, ...], at: int) -> int:
        """The filters' verdict (an action in HARMLESS means it runs) for
        syscall `nr` run from the `syscall` instruction at `at`.  The kernel
        gives the filters the address the thread returns to, just past that
        instruction (kernel/seccomp.c: populate_seccomp_data, KSTK_EIP)."""
        if not self.filters:
            return RET_ALLOW
        ip = at + len(SYSCALL_INSN)
        return verdict(self.filters, seccomp_data(nr, self.audit_arch, ip, args))

    def runs(self, calls) -> bool:
        """Whether every (nr, args, at) of `calls` would run."""
        return all(action(self.allows(nr, args, at)) in HARMLESS for nr, args, at in calls)

    def __call__(self, nr: int, args: tuple[int, ...], at: int) -> None:
        """The gate of every injected call, just before it runs: Denied when
        the filters would not let it (nothing of the task changed yet)."""
        ret = self.allows(nr, args, at)
        if action(ret) not in HARMLESS:
            raise Denied(nr, ret)


class Denied(Unsupported):
    """An injected syscall that the target's filters would not let run: it is
    never injected."""

    def __init__(self, nr: int, ret: int):
        name = next((n for n, v in NR.items() if v == nr), str(nr))
        super().__init__(f"the seccomp filters of the process would answer "
                         f"{describe(ret)} to the injected {name}",
                         "it cannot be snapshot safely; nothing was injected", stage=Stage.INJECT)
        self.nr = nr
        self.ret = ret
