"""JVM stacks from snapcore's cores, read by the target JDK's own jhsdb:
named threads sleeping, in a monitor's wait(), spinning and blocked on a
synchronized block, with the same name, state and top Java frame as `jstack`
(the JDK's attach-based tool, which needs a safepoint) gives for them.
One JVM for the module (a JVM starts slowly).  The JDK must be installed
(default-jdk-headless): a missing one fails, never skips.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import TARGETS, Victim, run_snapcore

NAMES = ("stx-sleeper", "stx-waiter", "stx-spinner", "stx-blocked")


@pytest.fixture(scope="module")
def jvm():
    assert shutil.which("javac") and shutil.which("jstack"), \
        "the JDK is missing: apt-get install default-jdk-headless"
    work = Path(tempfile.mkdtemp(prefix="snapcore-java-"))
    work.chmod(0o755)
    subprocess.run(["javac", "-d", str(work), str(TARGETS / "StacksTarget.java")], check=True)
    # A small heap, one GC thread: a short dump on a shared machine.
    victim = Victim(Path("StacksTarget"), "threads", work / "report.txt",
                    prefix=("java", "-Xmx64m", "-XX:+UseSerialGC", "-cp", str(work)))
    yield victim
    victim.stop()
    shutil.rmtree(work, ignore_errors=True)


def jstack_threads(pid: int) -> dict[str, tuple[str, str]]:
    """name -> (state, top Java frame) as jstack prints them."""
    out = subprocess.run(["jstack", str(pid)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    threads, name = {}, None
    for line in out.splitlines():
        m = re.match(r'^"(.*?)" #', line)
        if m:
            name = m.group(1)
            continue
        m = re.match(r"^\s+java\.lang\.Thread\.State: (\S+)", line)
        if m and name:
            threads[name] = (m.group(1), None)
        m = re.match(r"^\tat ([\w$.]+)\(", line)
        if m and name in threads and threads[name][1] is None:
            threads[name] = (threads[name][0], m.group(1))
    return threads


def test_java_threads_as_jstack_names_them(jvm, out_dir):
    proc = run_snapcore("stacks", "--json", "--max-per-hour", "0", "-o", str(out_dir),
                        str(jvm.pid))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["lang"], doc["reader"]) == ("java", "jhsdb"), doc
    assert re.match(r"\d+", doc["runtime_version"]), doc
    ours = {t["name"]: t for t in doc["threads"]}
    theirs = jstack_threads(jvm.pid)
    for name in NAMES:
        state, top = theirs[name]
        assert ours[name]["state"] == state, (name, ours[name], theirs[name])
        assert ours[name]["frames"][0]["function"] == top, (name, ours[name], theirs[name])
    assert ours["stx-sleeper"]["frames"][0]["function"] == "java.lang.Thread.sleep"
    assert ours["stx-blocked"]["state"] == "BLOCKED"
    assert ours["stx-spinner"]["frames"][0]["function"].startswith("StacksTarget.lambda$")
    # The threads' ids are the LWPs of the core (nid).
    tids = {int(p.name) for p in Path(f"/proc/{jvm.pid}/task").iterdir()}
    assert {t["id"] for t in doc["threads"]} <= tids
    text = run_snapcore("stacks", "--core", doc["core"])
    assert text.returncode == 0, text.stderr
    assert re.match(r"# java \d+\S*: \d+ threads read by jhsdb", text.stdout), text.stdout
    assert '"stx-waiter" [WAITING]' in text.stdout
    jvm.assert_unharmed()
