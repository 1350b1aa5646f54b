"""The seccomp check: a cBPF interpreter, and real filters installed by targets."""

from __future__ import annotations

import select
import signal
import struct
from pathlib import Path

import pytest

from snapcore.errors import ExitCode
from snapcore.linux import arch, ptrace, seccomp, stops
from snapcore.linux.window import peek

from conftest import run_snapcore, snap_json

S = seccomp
CLONE = arch.NR["clone"]


def insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> S.Insn:
    return S.Insn(code, jt, jf, k)


def load(offset: int) -> S.Insn:
    return insn(S.LD | S.W | S.ABS, offset)


def ret(k: int) -> S.Insn:
    return insn(S.RET | S.K, k)


def data(nr: int, *args: int, arch_id: int = arch.AUDIT_ARCH) -> bytes:
    return S.seccomp_data(nr, arch_id, 0x401000, args)


@pytest.mark.unit
def test_allow_all_and_parse_round_trip():
    raw = struct.pack("<HBBI", S.RET | S.K, 0, 0, S.RET_ALLOW)
    assert S.parse(raw) == [ret(S.RET_ALLOW)]
    assert S.verdict([S.parse(raw)], data(CLONE)) == S.RET_ALLOW


@pytest.mark.unit
def test_jeq_on_syscall_number():
    deny_clone = [load(0), insn(S.JMP | S.JEQ | S.K, CLONE, 0, 1),
                  ret(S.RET_ERRNO | 1), ret(S.RET_ALLOW)]
    assert S.verdict([deny_clone], data(CLONE)) == S.RET_ERRNO | 1
    assert S.verdict([deny_clone], data(arch.NR["wait4"])) == S.RET_ALLOW
    assert S.describe(S.RET_ERRNO | 1) == "ERRNO(1)"


@pytest.mark.unit
def test_arch_check():
    prog = [load(4), insn(S.JMP | S.JEQ | S.K, arch.AUDIT_ARCH, 1, 0),
            ret(S.RET_KILL_PROCESS), ret(S.RET_ALLOW)]
    assert S.verdict([prog], data(CLONE)) == S.RET_ALLOW
    assert S.verdict([prog], data(CLONE, arch_id=0x40000003)) == S.RET_KILL_PROCESS


@pytest.mark.unit
def test_argument_checks_high_and_low_words():
    # kill when args[1] (rsi) has bit 40 set: its high word is at offset 16+8+4
    prog = [load(28), insn(S.JMP | S.JSET | S.K, 1 << 8, 0, 1),
            ret(S.RET_KILL_THREAD), ret(S.RET_ALLOW)]
    assert S.verdict([prog], data(CLONE, 0, 1 << 40)) == S.RET_KILL_THREAD
    assert S.verdict([prog], data(CLONE, 0, 1 << 8)) == S.RET_ALLOW


@pytest.mark.unit
def test_alu_memory_and_registers():
    # A = nr; M[3] = A; A = A * 2 + 1; X = A; A = M[3]; A = A ^ X; ret A
    prog = [load(0), insn(S.ST, 3), insn(S.ALU | S.MUL | S.K, 2),
            insn(S.ALU | S.ADD | S.K, 1), insn(S.MISC | S.TAX), insn(S.LD | S.MEM, 3),
            insn(S.ALU | S.XOR | S.X), insn(S.RET | S.RET_A)]
    assert S.run(prog, data(56)) == 56 ^ 113
    # 0xffffffff + 2 wraps to 1; << 3 is 8; >> 1 is 4; negated in 32 bits
    prog = [insn(S.LD | S.IMM, 0xFFFFFFFF), insn(S.ALU | S.ADD | S.K, 2),
            insn(S.ALU | S.LSH | S.K, 3), insn(S.ALU | S.RSH | S.K, 1),
            insn(S.ALU | S.NEG), insn(S.RET | S.RET_A)]
    assert S.run(prog, data(0)) == 0xFFFFFFFC
    assert S.run([insn(S.LD | S.LEN), insn(S.RET | S.RET_A)], data(0)) == 64


@pytest.mark.unit
def test_jumps_ja_jgt_jge():
    prog = [load(0), insn(S.JMP | S.JGT | S.K, 100, 1, 0), insn(S.JMP | S.JA, 1),
            ret(S.RET_TRAP), insn(S.JMP | S.JGE | S.K, 50, 0, 1), ret(S.RET_LOG),
            ret(S.RET_ALLOW)]
    assert S.verdict([prog], data(200)) == S.RET_TRAP
    assert S.verdict([prog], data(60)) == S.RET_LOG
    assert S.verdict([prog], data(10)) == S.RET_ALLOW


@pytest.mark.unit
def test_most_restrictive_filter_wins():
    allow, errno_all, kill_all = [ret(S.RET_ALLOW)], [ret(S.RET_ERRNO | 5)], \
        [ret(S.RET_KILL_PROCESS)]
    assert S.verdict([allow, errno_all], data(1)) == S.RET_ERRNO | 5
    assert S.verdict([errno_all, kill_all, allow], data(1)) == S.RET_KILL_PROCESS
    assert S.verdict([[ret(S.RET_KILL_THREAD)], [ret(S.RET_TRAP)]], data(1)) == \
        S.RET_KILL_THREAD


@pytest.mark.unit
def test_broken_programs_are_rejected():
    with pytest.raises(S.FilterError):
        S.run([load(62), ret(S.RET_ALLOW)], data(0))  # past the end of seccomp_data
    with pytest.raises(S.FilterError):
        S.run([load(0)], data(0))  # runs off its end


ALLOWED = ["seccomp-allow", "seccomp-arch", "seccomp-newuser"]
# What the filters refuse first: every clone in the target, or (no-fork: a
# thread's clone allowed) the fork the fork thread makes.
REFUSED = {"seccomp-errno-clone": "clone in the target: ERRNO(1)",
           "seccomp-kill-clone": "clone in the target: KILL_PROCESS",
           "seccomp-no-fork": "clone in the fork thread: KILL_PROCESS"}


def test_filters_read_from_a_real_target(start_victim):
    victim = start_victim("seccomp-kill-clone")
    with stops.signals_held([signal.SIGCHLD]):
        raw = peek(victim.pid, ptrace.seccomp_filters, 2.0)
    filters = [S.parse(r) for r in raw]
    assert len(filters) == 1 and len(filters[0]) == 4
    assert S.verdict(filters, data(CLONE)) == S.RET_KILL_PROCESS
    assert S.verdict(filters, data(arch.NR["wait4"])) == S.RET_ALLOW
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.mark.parametrize("mode", ALLOWED)
def test_filters_that_allow_every_injection(mode, start_victim, out_dir):
    victim = start_victim(mode)
    code, doc = snap_json("-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    check = next(c for c in doc["checks"] if c["name"] == "seccomp")
    assert check["verdict"] == "ok" and "allow every injected syscall" in check["reason"]
    assert Path(doc["core"]["path"]).exists()
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.mark.parametrize("mode", list(REFUSED))
def test_filters_that_would_deny_or_kill_are_refused(mode, start_victim, out_dir):
    victim = start_victim(mode)
    proc = run_snapcore("-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.UNSUPPORTED, proc.stderr
    assert REFUSED[mode] in proc.stderr
    # The target survives: snapcore refused before injecting anything.
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()
    forced = run_snapcore("--force", "seccomp", str(victim.pid))
    assert forced.returncode == ExitCode.USAGE and "cannot be overridden" in forced.stderr


def test_strict_mode_is_refused(start_victim, out_dir):
    victim = start_victim("seccomp-strict")
    proc = run_snapcore("-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.UNSUPPORTED
    assert "strict seccomp" in proc.stderr
    victim.send("x")
    ready, _, _ = select.select([victim.proc.stdout], [], [], 5)
    assert ready and victim.proc.stdout.readline() == b"got\n"
    assert victim.proc.poll() is None
