"""Targets in namespaces a container gives them, as docs/kubernetes.md meets
them: a read-only root filesystem (staging), a cgroup namespace around
snapcore (the limits it cannot see), memory.oom.group, and an executable only
the target's mount namespace holds (--stacks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapcore.errors import ExitCode

from conftest import run_snapcore, snap_json
from helpers import check_json, prstatus_pids, verdicts

# The target's own mount namespace, in which the directories named in $RO are
# read-only bind mounts of themselves.  The report's directory (under /tmp)
# is made writable again: a bind mount has flags of its own, copied from its
# source (fs/namespace.c: clone_mnt), then changed by remount,bind.
READ_ONLY = ('for d in $RO; do mount --bind "$d" "$d" && mount -o remount,ro,bind "$d" '
             '|| exit 99; done; r=$(dirname "$3") && mount --bind "$r" "$r" && '
             'mount -o remount,rw,bind "$r" && exec "$@"')


def read_only(*dirs: str) -> tuple[str, ...]:
    return ("env", f"RO={' '.join(dirs)}", "unshare", "--mount", "--propagation", "private",
            "sh", "-c", READ_ONLY, "sh")


def staged_in(pid: int, place: str) -> list[str]:
    return [p for p in os.listdir(f"/proc/{pid}/root{place}")
            if p.startswith(".snapcore-staging-")]


def test_read_only_var_tmp_stages_in_the_targets_tmp(start_victim, out_dir):
    victim = start_victim("sleep", prefix=read_only("/var/tmp"))
    assert os.statvfs(f"/proc/{victim.pid}/root/var/tmp").f_flag & os.ST_RDONLY
    assert not os.statvfs(f"/proc/{victim.pid}/root/tmp").f_flag & os.ST_RDONLY
    code, doc = check_json("-o", str(out_dir), str(victim.pid))
    assert verdicts(doc)["staging"] == verdicts(doc)["disk"] == "ok", doc["checks"]
    reasons = {c["name"]: c["reason"] for c in doc["checks"]}
    assert f"/proc/{victim.pid}/root/tmp" in reasons["staging"], reasons
    assert f"/proc/{victim.pid}/root/tmp" in reasons["disk"], reasons
    code, doc = snap_json("--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert code == 0, doc
    core = Path(doc["core"]["path"])
    assert core.parent == out_dir and prstatus_pids(core) == [victim.pid]
    assert staged_in(victim.pid, "/tmp") == [] and staged_in(victim.pid, "/var/tmp") == []
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_no_writable_place_in_the_targets_view(start_victim, out_dir):
    """The kernel's writer needs a place in the target's view: asked for, it is
    refused before the target is touched; `auto` chooses snapcore's writer,
    which needs none, and says why (a distroless image)."""
    victim = start_victim("sleep", prefix=read_only("/var/tmp", "/tmp"))
    beats = victim.heartbeats()
    kernel = ("--writer", "kernel")
    proc = run_snapcore(*kernel, "--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.OUTPUT, f"exit {proc.returncode}: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "read-only" in lines[0] and "/tmp" in lines[0] and "emptyDir" in lines[0], lines
    assert "internal error" not in lines[0] and "--force" not in lines[0]
    code, doc = check_json(*kernel, "-o", str(out_dir), str(victim.pid))
    assert code == ExitCode.OUTPUT and verdicts(doc)["staging"] == "refuse", doc["checks"]
    # No override makes a read-only mount writable: forcing the checks that
    # may be forced still ends in the same refusal, before the target is touched.
    proc = run_snapcore(*kernel, "--force", "disk", "--force", "output-dir",
                        "--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == ExitCode.OUTPUT, f"exit {proc.returncode}: {proc.stderr}"
    assert "read-only" in proc.stderr and "internal error" not in proc.stderr
    victim.wait_for_heartbeats(beats + 2)
    victim.assert_unharmed()
    assert not out_dir.exists() or [p for p in os.listdir(out_dir) if p.endswith(".core")] == []

    code, doc = check_json("-o", str(out_dir), str(victim.pid))
    checks = {c["name"]: c for c in doc["checks"]}
    assert code == 0 and checks["staging"]["verdict"] == "ok", doc["checks"]
    assert "snapcore's writer" in checks["writer"]["reason"], checks["writer"]
    assert "writable place" in checks["writer"]["reason"], checks["writer"]
    proc = run_snapcore("--json", "--max-per-hour", "0", "-o", str(out_dir), str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["writer"]["name"] == "snapcore" and Path(snap["core"]["path"]).is_file(), snap
    victim.wait_for_heartbeats(victim.heartbeats() + 2)
    victim.assert_unharmed()


def _checks(command: list[str]) -> tuple[int, dict[str, dict]]:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.stdout, proc.stderr
    return proc.returncode, {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def test_cgroup_limits_from_a_cgroup_namespace(start_victim, cgroup, out_dir):
    """A memory and a pids limit (v1), judged by snapcore from the host's cgroup
    namespace, from one of its own that still has the host's cgroup mounts
    (unshare --cgroup: the limits are found through the mounts' roots), and
    from a debug container's view: a cgroup namespace rooted at a sibling
    cgroup, whose cgroup filesystem shows that cgroup alone (the target's is
    out of sight: a warning, never "ok")."""
    memory, pids = cgroup("memory"), cgroup("pids")
    victim = start_victim("fat", prefix=(
        "sh", "-c", f'echo $$ > {memory}/cgroup.procs && echo $$ > {pids}/cgroup.procs && '
        'exec "$@"', "sh"))
    usage = int((memory / "memory.usage_in_bytes").read_text())
    (memory / "memory.limit_in_bytes").write_text(str(usage + (4 << 20)))
    (pids / "pids.max").write_text(str(len(os.listdir(f"/proc/{victim.pid}/task")) + 3))
    check = [sys.executable, "-m", "snapcore", "check", "--json", "-o", str(out_dir),
             str(victim.pid)]

    code, host = _checks(check)
    assert host["memory"]["verdict"] == "refuse", host["memory"]
    assert "memory.limit_in_bytes" in host["memory"]["reason"]
    assert host["tasks"]["verdict"] == "refuse" and "pids.max" in host["tasks"]["reason"]

    code, inside = _checks(["unshare", "--cgroup", *check])
    assert inside["memory"]["verdict"] == "refuse", inside["memory"]
    assert f"{memory}/memory.limit_in_bytes" in inside["memory"]["reason"]
    assert inside["tasks"]["verdict"] == "refuse", inside["tasks"]
    assert code == ExitCode.MEMORY

    seen_from = {"memory": cgroup("memory"), "pids": cgroup("pids")}
    # Each cgroup of DBG (made at its hierarchy's root) mounted over that root.
    debug = ("for c in $DBG; do echo $$ > $c/cgroup.procs || exit 99; done; "
             "exec unshare --cgroup --mount --propagation private sh -c "
             "'for c in $DBG; do mount --bind $c ${c%/*} "
             "|| exit 99; done; exec \"$@\"' sh \"$@\"")
    dbg = " ".join(str(p) for p in seen_from.values())
    code, blind = _checks(["env", f"DBG={dbg}", "sh", "-c", debug, "sh", *check])
    for name in ("memory", "tasks"):
        assert blind[name]["verdict"] == "warn", blind[name]
        assert "cannot see the target's cgroup limits from this cgroup namespace" in \
            blind[name]["reason"], blind[name]
        assert "nsenter -C -t 1" in blind[name]["fix"]
    assert f"/../{memory.name}" in blind["memory"]["reason"]
    assert f"/../{pids.name}" in blind["tasks"]["reason"]
    assert code == 0  # a warning: the operator decides
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def _fake_memory(where: Path, current: int, room: int | None, group: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    (where / "memory.current").write_text(f"{current}\n")
    (where / "memory.max").write_text(f"{current + room}\n" if room is not None else "max\n")
    (where / "memory.oom.group").write_text(f"{group}\n")
    (where / "memory.stat").write_text("anon 0\nfile 0\n")


def test_memory_oom_group_makes_the_memory_check_stricter(start_victim, cgroup, tmp_path,
                                                          out_dir):
    """kubelet's memory.oom.group=1: an OOM kill under the limit takes the target
    with the child.  The target runs in a real v2 cgroup (pod/container) whose
    path snapcore reads from /proc/PID/cgroup and walks up to the mount; the
    v2 memory controller is bound to v1 on the test machine, so the memory
    files are a tree bind-mounted over the pod's directory in snapcore's own
    mount namespace (the kernel's OOM-group kill itself is not exercised)."""
    pod = cgroup("unified")
    container = cgroup("unified", under=pod)
    victim = start_victim("fat", prefix=("sh", "-c", f'echo $$ > {container}/cgroup.procs && '
                                         'exec "$@"', "sh"))
    assert f"0::/{pod.name}/{container.name}\n" in \
        Path(f"/proc/{victim.pid}/cgroup").read_text().splitlines(keepends=True)
    fake = tmp_path / "fake"
    seen_as = ("env", f"FAKE={fake}", f"POD={pod}", "unshare", "--mount", "--propagation",
               "private", "sh", "-c", 'mount --bind "$FAKE" "$POD" && exec "$@"', "sh",
               sys.executable, "-m", "snapcore")
    snap = (*seen_as, "--json", "--max-per-hour", "0", "-o", str(out_dir))
    check = (*seen_as, "check", "--json", "-o", str(out_dir), str(victim.pid))

    def memory(container_room, container_group, pod_room=None, pod_group=0):
        _fake_memory(fake, 100 << 20, pod_room, pod_group)
        _fake_memory(fake / container.name, 90 << 20, container_room, container_group)
        code, checks = _checks(list(check))
        return code, checks["memory"]

    # The copy-on-write worst case, about 24 MiB, fits in 40 MiB of room: ok
    # without oom.group, refused with it (over half the room), on the
    # container's own cgroup or on the pod's above it.
    code, plain = memory(40 << 20, 0)
    assert plain["verdict"] == "ok", plain
    code, grouped = memory(40 << 20, 1)
    assert grouped["verdict"] == "refuse" and code == ExitCode.MEMORY, grouped
    assert f"{container}/memory.oom.group is 1" in grouped["reason"], grouped
    assert f"{container}/memory.max" in grouped["reason"], grouped
    proc = subprocess.run([*seen_as, "--max-per-hour", "0", "-o", str(out_dir),
                           str(victim.pid)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.MEMORY, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "memory.oom.group" in proc.stderr
    assert "--force memory" in proc.stderr
    victim.assert_unharmed()

    code, above = memory(None, 0, pod_room=40 << 20, pod_group=1)
    assert above["verdict"] == "refuse", above
    assert f"{pod}/memory.oom.group is 1" in above["reason"], above

    proc = subprocess.run([*snap, "--force", "memory", str(victim.pid)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()

    # Ample room: a warning naming oom.group, and the snapshot goes ahead.
    code, roomy = memory(1 << 30, 1)
    assert roomy["verdict"] == "warn" and "memory.oom.group is 1" in roomy["reason"], roomy
    proc = subprocess.run([*snap, str(victim.pid)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert prstatus_pids(Path(doc["core"]["path"])) == [victim.pid]
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_stacks_of_a_target_whose_executable_only_it_sees(start_victim, victim_exe, tmp_path,
                                                          out_dir):
    """The target runs a copy of its program from a tmpfs mounted in its own
    mount namespace: its name for the file names nothing in snapcore's.  gdb
    is handed the file itself (/proc/PID/exe, opened while the target ran),
    the record keeps the target's name with that file's build-id, and later
    readers find it through /proc/PID/root while the target lives."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    program = hidden / "prog"
    hide = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs tmpfs {hidden} && cp "$0" {program} && shift && '
            f'exec {program} "$@"', str(victim_exe))
    victim = start_victim("sleep", prefix=hide)
    assert os.readlink(f"/proc/{victim.pid}/exe") == str(program)
    assert not program.exists()  # in snapcore's view: nothing
    proc = run_snapcore("--stacks", "--max-per-hour", "0", "-o", str(out_dir),
                        str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    assert "mode_sleep" in proc.stdout and " main (" in proc.stdout, proc.stdout + proc.stderr
    assert "stacks" not in proc.stderr, proc.stderr

    proc = run_snapcore("stacks", "--json", "--max-per-hour", "0", "-o", str(out_dir),
                        str(victim.pid))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert "mode_sleep" in doc["stacks"] and doc["exe"] == str(program), doc
    core = Path(doc["core"])
    record = json.loads(core.with_suffix(".json").read_text())
    assert record["target"]["exe"] == str(program)
    from snapcore.core import elf
    assert record["target"]["build_id"] == elf.build_id(str(victim_exe)) is not None
    # Read later, the target still running: its root holds the recorded build.
    proc = run_snapcore("stacks", "--core", str(core))
    assert proc.returncode == 0 and "mode_sleep" in proc.stdout, proc.stdout + proc.stderr
    proc = run_snapcore("info", "--json", str(core), "-o", str(out_dir))
    assert proc.returncode == 0 and json.loads(proc.stdout)["warnings"] == [], proc.stdout
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()
