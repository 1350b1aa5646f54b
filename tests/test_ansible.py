"""The Ansible collection (contrib/ansible): the module snapcore.snapcore.snapcore
and the playbook snapcore.snapcore.snapshot, run by the real `ansible` and
`ansible-playbook` against localhost on real targets.

ansible-core is the `ansible` extra (pip install -e '.[test,ansible]'; .ci/run
installs it).  Without it these tests fail: they are not skipped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from snapcore.errors import ExitCode

from helpers import cores_in, process_state, prstatus_pids, wait_until

pytestmark = pytest.mark.slow  # ansible-playbook and ansible-test runs

ROOT = Path(__file__).parent.parent
COLLECTIONS = ROOT / "contrib" / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections" / "snapcore" / "snapcore"
BIN = Path(sys.executable).parent  # the virtualenv .ci/run makes: ansible and snapcore
MODULE = "snapcore.snapcore.snapcore"


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), (f"{path} is missing: install the test and ansible extras, "
                           f"pip install -e '.[test,ansible]' (bash .ci/run does)")
    return str(path)


@pytest.fixture
def ansible_env(tmp_path):
    """Ansible finding the collection in the repository, keeping its state in
    the test's directory, and running modules with this Python."""
    home = tmp_path / "ansible-home"
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
                ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
                ANSIBLE_REMOTE_TEMP=str(home / "remote-tmp"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_DEPRECATION_WARNINGS="0", ANSIBLE_RETRY_FILES_ENABLED="0")


LOCALHOST = ["-i", "localhost,", "-c", "local",
             "-e", f"ansible_python_interpreter={sys.executable}"]


def run_module(env, args: dict, *extra: str) -> tuple[int, str, dict]:
    """`ansible localhost -m snapcore.snapcore.snapcore -a ARGS`: its exit
    status, the host's status (CHANGED, SUCCESS, FAILED!) and its result
    (with ansible's stderr as `_stderr`)."""
    args = dict(args, executable=args.get("executable", tool("snapcore")))
    proc = subprocess.run([tool("ansible"), "localhost", *LOCALHOST, "-m", MODULE,
                           "-a", json.dumps(args), *extra],
                          capture_output=True, text=True, env=env, timeout=120)
    m = re.search(r"^localhost \| (\S+) => ", proc.stdout, re.M)
    assert m, f"no result from ansible:\n{proc.stdout}\n{proc.stderr}"
    result, _ = json.JSONDecoder().raw_decode(proc.stdout[m.end():])
    result["_stderr"] = proc.stderr  # where ansible shows the task's warnings
    return proc.returncode, m.group(1), result


def test_ansible_doc_renders_the_module(ansible_env):
    proc = subprocess.run([tool("ansible-doc"), MODULE], capture_output=True, text=True,
                          env=ansible_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = proc.stdout
    assert f"MODULE {MODULE}" in re.sub(r"\x1b\[[0-9;]*m", "", doc)
    for option in ("pid", "name", "pidfile", "unit", "reason", "output_dir", "compress",
                   "writer", "force", "executable"):
        assert re.search(rf"^- {option}\s", doc, re.M), f"option {option} not shown"
    for part in ("EXAMPLES", "RETURN VALUES", "check_mode", "core_path", "pause_ms",
                 "install.sh", "snapcore's own writer"):
        assert part in doc, part
    assert "WARNING" not in proc.stderr, proc.stderr
    listed = subprocess.run([tool("ansible-doc"), "-l", "snapcore.snapcore"],
                            capture_output=True, text=True, env=ansible_env, timeout=60)
    assert MODULE in listed.stdout, listed.stdout + listed.stderr


def test_module_takes_a_snapshot(ansible_env, start_victim, threads_exe, out_dir):
    victim = start_victim("many", exe=threads_exe, args=("3",))
    code, status, result = run_module(ansible_env, {
        "pid": victim.pid, "reason": "INC-14 ansible", "output_dir": str(out_dir)})

    assert code == 0 and status == "CHANGED", result
    assert result["changed"] is True and result["rc"] == 0
    core = Path(result["core_path"])
    assert core.is_file() and core.parent == out_dir
    assert result["core_size"] == core.stat().st_size == result["core"]["size"]
    assert result["pause_ms"] > 0 and result["pause_split_ms"]["fork"] > 0
    threads = len(os.listdir(f"/proc/{victim.pid}/task"))
    assert result["threads"] == threads == 4
    assert result["target"]["pid"] == victim.pid
    assert json.loads(Path(result["record_path"]).read_text())["reason"] == "INC-14 ansible"
    assert [s["core"]["path"] for s in result["snapshots"]] == [str(core)]
    assert result["cmd"][1:3] == ["snap", "--json"]
    assert "--writer" not in result["cmd"]  # passed only when the task sets writer
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_check_mode_takes_nothing_and_returns_the_verdict(ansible_env, start_victim,
                                                          out_dir):
    victim = start_victim("sleep")
    code, status, result = run_module(ansible_env, {
        "pid": victim.pid, "reason": "dry run", "output_dir": str(out_dir),
        "compress": True}, "--check")

    assert code == 0 and status == "CHANGED", result  # a snapshot would be taken
    assert result["would_snapshot"] is True and result["exit_code"] == 0
    verdicts = {c["name"]: c["verdict"] for c in result["checks"]}
    assert verdicts["state"] == "ok" and verdicts["rate-limit"] == "ok"
    assert set(verdicts) >= {"permission", "tracer", "seccomp", "disk", "memory"}
    assert result["target"]["pid"] == victim.pid and result["core_estimate"] > 0
    assert result["cmd"][1:3] == ["check", "--json"]
    assert "--reason" not in result["cmd"] and "--compress" not in result["cmd"]
    assert not out_dir.exists()  # nothing written, not even the directory
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_check_mode_a_refusal_named_in_force_does_not_fail(ansible_env, start_victim,
                                                          tmp_path):
    victim = start_victim("sleep")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable without the sticky bit: output-dir refuses
    code, status, result = run_module(ansible_env, {"pid": victim.pid,
                                                    "output_dir": str(shared)}, "--check")
    assert status == "FAILED!" and result["rc"] == ExitCode.OUTPUT, result
    assert "would be refused (output-dir)" in result["msg"]
    assert "--force output-dir" in result["msg"]

    code, status, result = run_module(ansible_env, {"pid": victim.pid,
                                                    "output_dir": str(shared),
                                                    "force": ["output-dir"]}, "--check")
    assert code == 0 and status == "CHANGED", result
    assert result["forced"] == ["output-dir"] and result["would_snapshot"] is False
    assert os.listdir(shared) == []
    victim.assert_unharmed()


def test_a_core_handed_to_a_pipe_is_a_snapshot_taken(ansible_env, core_pattern,
                                                     start_victim, out_dir, tmp_path):
    """With the kernel's writer, snapcore exits 9 when core_pattern pipes the
    core to a handler: the snapshot was taken, so the task is changed, not
    failed, and warns.  (`auto` writes such a core itself: test_writer.py.)"""
    kept = tmp_path / "kept"
    kept.mkdir()
    handler = tmp_path / "handler.sh"
    handler.write_text(f"#!/bin/sh\ncat > {kept}/core.$1\n")
    handler.chmod(0o755)
    core_pattern(f"|{handler} %P")
    victim = start_victim("sleep")
    code, status, result = run_module(ansible_env, {"pid": victim.pid, "writer": "kernel",
                                                    "output_dir": str(out_dir)})
    assert code == 0 and status == "CHANGED", result
    assert result["rc"] == ExitCode.CORE_PIPED and result["core_path"] is None
    warning = " ".join(result["_stderr"].split())  # ansible wraps long warnings
    assert f"handed to {handler} by core_pattern" in warning, warning
    assert f"look for pid {result['child_pid']}" in warning, warning
    wait_until(lambda: (kept / f"core.{result['child_pid']}").exists(), "the handler ran")
    victim.assert_unharmed()


def test_a_zombie_fails_the_task_with_the_reason(ansible_env, out_dir):
    proc = subprocess.Popen(["true"])
    wait_until(lambda: process_state(proc.pid) == "Z", "it has exited, not reaped")
    try:
        code, status, result = run_module(ansible_env, {"pid": proc.pid,
                                                        "output_dir": str(out_dir)})
        assert code != 0 and status == "FAILED!", result
        assert result["rc"] == ExitCode.UNSUPPORTED
        assert "zombie" in result["msg"] and "\n" not in result["msg"]
        assert result["error"]["exit_code"] == ExitCode.UNSUPPORTED
        assert result["changed"] is False
        assert process_state(proc.pid) == "Z"
    finally:
        proc.wait()


def test_a_stopped_target_fails_the_task_and_stays_stopped(ansible_env, start_victim,
                                                           out_dir):
    victim = start_victim("sleep")
    os.kill(victim.pid, signal.SIGSTOP)
    wait_until(lambda: process_state(victim.pid) == "T", "it is stopped")
    try:
        code, status, result = run_module(ansible_env, {"pid": victim.pid,
                                                        "output_dir": str(out_dir)})
        assert code != 0 and status == "FAILED!", result
        assert result["rc"] == ExitCode.UNSUPPORTED
        assert "stopped" in result["msg"] and "kill -CONT" in result["msg"]
        assert process_state(victim.pid) == "T"

        code, status, result = run_module(ansible_env, {"pid": victim.pid,
                                                        "output_dir": str(out_dir)},
                                          "--check")
        assert code != 0 and status == "FAILED!", result
        assert result["would_snapshot"] is False and result["rc"] == ExitCode.UNSUPPORTED
        assert "would be refused (state)" in result["msg"] and "stopped" in result["msg"]
        assert process_state(victim.pid) == "T"
        assert not out_dir.exists() or cores_in(out_dir) == []
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_missing_snapcore_says_how_to_install_it(ansible_env, tmp_path):
    code, status, result = run_module(ansible_env, {
        "pid": os.getpid(), "executable": str(tmp_path / "no-such" / "snapcore")})
    assert code != 0 and status == "FAILED!", result
    assert "snapcore not found" in result["msg"] and "install.sh" in result["msg"]


def test_a_missing_option_is_snapcores_usage_error(ansible_env, start_victim, out_dir):
    """writer is passed as --writer only when set; a snapcore without that
    option says so itself (exit 2), and the target is never touched."""
    victim = start_victim("sleep")
    code, status, result = run_module(ansible_env, {
        "pid": victim.pid, "output_dir": str(out_dir), "writer": "kernel"})
    assert "--writer" in result["cmd"]
    if status == "FAILED!":  # a snapcore without --writer
        assert result["rc"] == ExitCode.USAGE and "--writer" in result["msg"]
    else:
        assert code == 0 and Path(result["core_path"]).is_file()
    victim.assert_unharmed()


def run_playbook(env, *variables: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([tool("ansible-playbook"), *LOCALHOST, "snapcore.snapcore.snapshot",
                           "-e", f"snapcore_executable={tool('snapcore')}",
                           *[arg for v in variables for arg in ("-e", v)]],
                          capture_output=True, text=True, env=env, timeout=180)
    print(proc.stdout)  # the closing note shows it (pytest -s)
    return proc


def test_playbook_fetches_the_core_and_its_record_then_prunes(ansible_env, start_victim,
                                                              threads_exe, out_dir, tmp_path):
    victim = start_victim("many", exe=threads_exe, args=("3",))
    tids = sorted(int(t) for t in os.listdir(f"/proc/{victim.pid}/task"))
    dest = tmp_path / "controller"
    proc = run_playbook(ansible_env, f"snapcore_pid={victim.pid}", "snapcore_reason=INC-14",
                        f"snapcore_output_dir={out_dir}", f"snapcore_dest={dest}",
                        "snapcore_prune=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"localhost\s+: ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=0",
                     proc.stdout), proc.stdout
    fetched = dest / "localhost"
    [core] = cores_in(fetched)
    record = core.replace(".core", ".json")
    assert sorted(os.listdir(fetched)) == sorted([core, record])
    for name in (core, record):  # private on the controller as on the host
        assert (fetched / name).stat().st_mode & 0o777 == 0o600, name
    data = json.loads((fetched / record).read_text())
    assert data["reason"] == "INC-14" and data["target"]["pid"] == victim.pid
    assert (fetched / core).stat().st_size == data["core"]["size"]
    assert sorted(prstatus_pids(fetched / core)) == tids  # the target's core, whole
    assert cores_in(out_dir) == [] and not (out_dir / record).exists()  # pruned
    assert f"fetched to {fetched}/{core}, removed from the host" in proc.stdout
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_playbook_big_core_brings_record_and_stacks_only(ansible_env, start_victim,
                                                         threads_exe, out_dir, tmp_path):
    victim = start_victim("many", exe=threads_exe, args=("3",))
    dest = tmp_path / "controller"
    # A core over snapcore_fetch_max_size stays on the host with its record
    # (snapcore list and prune need both there); its record and stacks come.
    proc = run_playbook(ansible_env, f"snapcore_pid={victim.pid}", "snapcore_reason=INC-14",
                        f"snapcore_output_dir={out_dir}", f"snapcore_dest={dest}",
                        "snapcore_fetch_max_size=64K", "snapcore_prune=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [core] = cores_in(out_dir)
    base = core[:-len(".core")]
    assert (out_dir / f"{base}.json").is_file()  # not pruned: the core was not fetched
    fetched = dest / "localhost"
    assert sorted(os.listdir(fetched)) == sorted([f"{base}.json", f"{base}.stacks.txt"])
    stacks = (fetched / f"{base}.stacks.txt").read_text()
    assert "many_sleeper" in stacks and "main_sleeper" in stacks
    assert f"kept on the host: {out_dir / core}; record and stacks fetched" in proc.stdout
    victim.wait_for_heartbeats(victim.heartbeats())
    victim.assert_unharmed()


def test_playbook_refusal_fails_the_host_with_the_reason(ansible_env, tmp_path, out_dir):
    proc = subprocess.Popen(["true"])
    wait_until(lambda: process_state(proc.pid) == "Z", "it has exited, not reaped")
    try:
        run = run_playbook(ansible_env, f"snapcore_pid={proc.pid}", "snapcore_reason=INC-14",
                           f"snapcore_output_dir={out_dir}",
                           f"snapcore_dest={tmp_path / 'controller'}")
    finally:
        proc.wait()
    assert run.returncode != 0
    assert re.search(r"localhost\s+: .*failed=1", run.stdout), run.stdout
    assert f"snapcore exit code {int(ExitCode.UNSUPPORTED)}: " in run.stdout
    assert "zombie" in run.stdout


# ansible-test sanity: the tests that run offline.  The others (ansible-doc,
# import, pep8, pylint, runtime-metadata, validate-modules, yamllint) each
# build a virtualenv with a pip bootstrap script ansible-test downloads from
# ci-files.testing.ansible.com, which this CI does not reach (see the
# collection's README).
NEEDS_BOOTSTRAP = ("ansible-doc", "import", "pep8", "pylint", "runtime-metadata",
                   "validate-modules", "yamllint")


def test_ansible_test_sanity_offline(tmp_path):
    skips = [arg for name in NEEDS_BOOTSTRAP for arg in ("--skip-test", name)]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    proc = subprocess.run([tool("ansible-test"), "sanity", "--local", "--python", python,
                           *skips], cwd=COLLECTION, capture_output=True, text=True,
                          env=dict(os.environ, HOME=str(tmp_path)), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = re.findall(r'Running sanity test "([\w-]+)"', proc.stdout + proc.stderr)
    assert {"compile", "shebang", "use-argspec-type-path", "no-smart-quotes"} <= set(ran), ran
