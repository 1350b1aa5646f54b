"""The README's Quick start, command one, as a new operator runs it: install.sh
with the distribution's python3 in a clean environment (PEP 668: no pip into
the system's Python), then the installed command on a process; and Ctrl-C at
any moment from the command's exec.  Every documented recipe runs with that
command, under cron's environment (`env -i PATH=/usr/bin:/bin`); the README's
cron line, unit and runbook are read from README.md itself, so that they
cannot drift from what is tested."""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # install.sh into a fresh virtualenv, then the installed command

ROOT = Path(__file__).parent.parent
CLEAN = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # what `env -i` leaves, as on a server
CRON = {"PATH": "/usr/bin:/bin"}  # cron's PATH (and what a unit may have)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """install.sh into a place of its own; the installed command."""
    base = tmp_path_factory.mktemp("install")
    places = {"PREFIX": str(base / "opt"), "BINDIR": str(base / "bin"),
              "MANDIR": str(base / "man")}
    done = subprocess.run(["sh", str(ROOT / "install.sh")], env={**CLEAN, **places},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (base / "man" / "man1" / "snapcore.1").is_file()
    (base / "install.stderr").write_text(done.stderr)  # for the test of its warning
    return base / "bin" / "snapcore"


def test_install_warns_when_bindir_is_not_on_path_and_leaves_no_stray_gdb(installed):
    """BINDIR (a temporary one) is not on the installing shell's PATH: one
    line says so and how to run it; python-ptrace's demo gdb.py and
    strace.py are not left in the virtualenv's bin/."""
    said = (installed.parent.parent / "install.stderr").read_text()
    lines = [line for line in said.splitlines() if "warning" in line]
    assert lines == [f"install.sh: warning: {installed.parent} is not on PATH: run "
                     f"{installed} by its full path"], said
    venv_bin = installed.parent.parent / "opt" / "bin"
    assert (venv_bin / "snapcore").is_file()
    assert not (venv_bin / "gdb.py").exists() and not (venv_bin / "strace.py").exists()


def test_install_script_then_a_snapshot(installed, tmp_path):
    target = subprocess.Popen(["sleep", "60"])
    try:
        taken = subprocess.run([str(installed), "-q", "-o", str(tmp_path / "cores"),
                                str(target.pid)], env=CLEAN, capture_output=True, text=True,
                               timeout=120)
        assert taken.returncode == 0, taken.stderr
        assert Path(taken.stdout.strip()).is_file()
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


@pytest.mark.parametrize("writer", ["kernel", "snapcore"])
@pytest.mark.usefixtures("file_core_pattern")  # asks for the kernel's writer
def test_installed_command_compresses(installed, tmp_path, writer):
    """--compress (cron, timers and the README's object-storage recipe use
    it) works from the command install.sh put on PATH: zstandard is a
    dependency, not an extra."""
    target = subprocess.Popen(["sleep", "60"])
    try:
        taken = subprocess.run([str(installed), "-q", "--compress", "--writer", writer,
                                "--max-per-hour", "0", "-o", str(tmp_path / "cores"),
                                str(target.pid)], env=CLEAN, capture_output=True, text=True,
                               timeout=120)
        assert taken.returncode == 0, taken.stderr
        core = Path(taken.stdout.strip())
        assert core.name.endswith(".core.zst") and core.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


def test_ctrl_c_at_30_moments_from_exec(installed, start_victim, tmp_path):
    """From the exec of the installed command to its exit: never a traceback,
    exit 130 (or death by SIGINT before the interpreter runs a line, which the
    shell reports as 130 too; or 0 when it came after the work), and the
    target unharmed."""
    victim = start_victim("futex")  # a helper thread, the main one in a raw futex wait
    command = [str(installed), "--max-per-hour", "0", "-o", str(tmp_path / "cores"),
               str(victim.pid)]
    # Moments spread over a whole run, however fast this machine is.
    spans = []
    for _ in range(3):
        start = time.monotonic()
        subprocess.run(command, env=CLEAN, capture_output=True, check=True)
        spans.append(time.monotonic() - start)
    rng = random.Random(12)
    outcomes = []
    for _ in range(30):
        proc = subprocess.Popen(command, env=CLEAN, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.0, sorted(spans)[1]))  # the random moment itself
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, err)
        if proc.returncode == 130:
            assert err.count("\n") == 1 and err.startswith("snapcore: "), err
        outcomes.append(proc.returncode)
        victim.assert_unharmed()
    assert outcomes.count(130) >= 10, outcomes  # most landed while snapcore ran
    victim.send("wake\n")
    victim.wait_for_line("woken")
    victim.assert_unharmed()


def _zstandard_hint(python: str, env: dict) -> str:
    """The hint snapcore gives, under PYTHON, when zstandard cannot be imported."""
    code = ("import sys; sys.modules['zstandard'] = None\n"
            "from snapcore.core.sink import zstd_missing; print(zstd_missing())")
    out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert "install it: " in out, out
    return out.split("install it: ", 1)[1]


def test_install_hints_name_a_command_that_works(installed):
    """A missing zstandard is a broken install: the hint names the command
    for the way snapcore was installed, and that command, run as given, works
    (the old hint, pip install 'snapcore[compress]', fails under PEP 668)."""
    venv_python = str(installed.parent.parent / "opt" / "bin" / "python3")
    hint = _zstandard_hint(venv_python, CRON)
    assert hint == f"{venv_python} -m pip install zstandard"
    ran = subprocess.run(hint, shell=True, env=CRON, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # Debian's own python3 (snapcore run from a checkout): pip is refused
    # there (PEP 668), apt has the package.
    hint = _zstandard_hint("/usr/bin/python3", {**CRON, "PYTHONPATH": str(ROOT)})
    assert hint == "apt-get install python3-zstandard"
    simulated = subprocess.run(hint.replace("install", "install -s", 1), shell=True,
                               env=CLEAN, capture_output=True, text=True, timeout=120)
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr


@pytest.fixture
def sleeper():
    target = subprocess.Popen(["sleep", "300"])
    yield target
    assert target.poll() is None  # every recipe left it running
    target.kill()
    target.wait()


def _run(argv, *, env=None, timeout=120, **kw):
    return subprocess.run(argv, env=env or CRON, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def test_every_feature_from_the_installed_command(installed, sleeper, tmp_path):
    """snapshot, --compress, --stacks, info, debug, list, prune, watch: the
    command install.sh put on PATH, in cron's environment."""
    sc, out, pid = str(installed), str(tmp_path / "cores"), str(sleeper.pid)
    base = [sc, "-o", out, "--max-per-hour", "0"]
    assert _run([*base, pid]).returncode == 0
    taken = _run([*base, "-q", "--compress", pid])
    assert taken.returncode == 0 and taken.stdout.strip().endswith(".core.zst"), taken
    stacks = _run([*base, "--stacks", pid])
    assert stacks.returncode == 0 and "#0 " in stacks.stdout, stacks
    info = _run([sc, "info", "-o", out, pid])
    assert info.returncode == 0 and "sleep" in info.stdout, info
    for match in (pid, taken.stdout.strip()):  # the newest (plain), and the .zst
        gdb = _run([sc, "debug", "-o", out, match, "-A", "-batch -ex bt"])
        assert gdb.returncode == 0 and "#0 " in gdb.stdout, gdb
    latest = _run([sc, "list", "-o", out, "-q", "--latest"])
    assert latest.returncode == 0 and Path(latest.stdout.strip()).is_file(), latest
    watched = _run([sc, "watch", "-o", out, "--max-per-hour", "0", "--rss", "1K", "--for",
                    "0", "--interval", "0.1", "--count", "1", pid])
    assert watched.returncode == 0, watched
    # Four records, and the stacks --stacks kept beside its snapshot.
    assert len(list(Path(out).glob("*[0-9].json"))) == 4
    assert len(list(Path(out).glob("*.stacks.json"))) == 1
    pruned = _run([sc, "prune", "-o", out, "--keep", "1"])
    assert pruned.returncode == 0 and "removed 3 snapshot(s), kept 1" in pruned.stdout, pruned
    assert len(list(Path(out).glob("*.json"))) == 1


def test_python_stacks_from_the_installed_command(installed, tmp_path):
    """install.sh installs pystack beside snapcore: a CPython process's
    stacks, and info's top frames, from the installed command in cron's
    environment, run from a checkout (a snapcore/ in the working directory)."""
    target = subprocess.Popen(["/usr/bin/python3", "-c",
                               "import time\ndef waiting_here():\n    time.sleep(300)\n"
                               "waiting_here()"])
    try:
        time.sleep(0.5)
        sc, out = str(installed), str(tmp_path / "cores")
        read = _run([sc, "stacks", "-o", out, "--max-per-hour", "0", str(target.pid)],
                    cwd=ROOT)
        assert read.returncode == 0, read
        assert re.match(r"# python 3\.\d+: 1 threads read by pystack", read.stdout), read.stdout
        assert "waiting_here at <string>:3" in read.stdout, read.stdout
        info = _run([sc, "info", "-o", out, "--frames", "1", str(target.pid)], cwd=ROOT)
        assert info.returncode == 0 and "    waiting_here at <string>:3\n" in info.stdout, info
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


def test_info_and_debug_open_a_core_without_its_record(installed, sleeper, tmp_path):
    """A `-o -` core and a .zst core whose record stayed behind (copied back
    from object storage): info reads the core's notes, debug finds the
    executable from them (NT_FILE at the auxv entry point)."""
    sc, pid = str(installed), str(sleeper.pid)
    with open(tmp_path / "streamed.core", "wb") as f:
        assert subprocess.run([sc, "-o", "-", "--max-per-hour", "0", pid], env=CRON,
                              stdout=f, stderr=subprocess.DEVNULL, timeout=120).returncode == 0
    taken = _run([sc, "-q", "--compress", "-o", str(tmp_path / "d"), pid])
    copied = tmp_path / "back-from-s3.core.zst"
    shutil.copy(taken.stdout.strip(), copied)  # no record beside it
    for core in (tmp_path / "streamed.core", copied):
        info = _run([sc, "info", "--json", str(core)])
        assert info.returncode == 0, info
        doc = json.loads(info.stdout)
        assert doc["record"] is None and doc["from_core"]["pid"] == sleeper.pid, doc
        assert doc["from_core"]["exe"] == "/usr/bin/sleep" and doc["from_core"]["threads"]
        shown = _run([sc, "info", str(core)])
        assert shown.returncode == 0 and "no record beside it" in shown.stdout, shown
        gdb = _run([sc, "debug", str(core), "-A", "-batch -ex bt"])
        assert gdb.returncode == 0 and "#0 " in gdb.stdout, gdb
        stacks = _run([sc, "stacks", "--core", str(core)])
        assert stacks.returncode == 0 and "#0 " in stacks.stdout, stacks


def test_debug_asks_for_exe_when_the_cores_executable_is_gone(installed, tmp_path):
    """The executable the core names was removed (an upgrade): one line asks
    for --exe (exit 2); with --exe, gdb opens it."""
    exe = tmp_path / "gone-sleep"
    shutil.copy("/usr/bin/sleep", exe)
    target = subprocess.Popen([str(exe), "300"])
    try:
        core = tmp_path / "gone.core"
        with open(core, "wb") as f:
            assert subprocess.run([str(installed), "-o", "-", str(target.pid)], env=CRON,
                                  stdout=f, stderr=subprocess.DEVNULL,
                                  timeout=120).returncode == 0
    finally:
        target.kill()
        target.wait()
    exe.unlink()
    refused = _run([str(installed), "debug", str(core), "-A", "-batch -ex bt"])
    assert refused.returncode == 2 and refused.stdout == "", refused
    assert refused.stderr.count("\n") == 1 and "--exe" in refused.stderr, refused.stderr
    assert f"{exe}" in refused.stderr
    given = _run([str(installed), "debug", "--exe", "/usr/bin/sleep", str(core),
                  "-A", "-batch -ex bt"])
    assert given.returncode == 0 and "#0 " in given.stdout, given


def _readme_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```[a-z]*\n(.*?)```", body, re.S)


def _substituted(line: str, installed: Path, pidfile: Path) -> str:
    """A README line with only the command's place and the selector changed."""
    for selector in ("--unit postgresql.service", "--name 'postgres: checkpointer'"):
        line = line.replace(selector, f"--pidfile {pidfile}")
    return line.replace("/usr/local/bin/snapcore", str(installed))


def test_readme_cron_line_verbatim(installed, sleeper, tmp_path):
    """The README's cron line under cron's environment (PATH=/usr/bin:/bin,
    /bin/sh): a snapshot taken and pruned, and nothing printed (no cron mail)."""
    lines = [line for block in _readme_blocks("Unattended runs")
             for line in block.splitlines() if re.match(r"(\S+ ){5}root ", line)]
    assert len(lines) == 1, lines
    pidfile = tmp_path / "pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    command = _substituted(lines[0].split(" ", 6)[6], installed, pidfile)
    assert str(installed) in command and str(pidfile) in command
    env = {**CRON, "SHELL": "/bin/sh", "HOME": "/root", "LOGNAME": "root",
           "SNAPCORE_DIR": str(tmp_path / "cores")}  # the output dir, substituted
    for _ in range(2):
        ran = _run(["/bin/sh", "-c", command], env=env)
        assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "")
    assert len(list((tmp_path / "cores").glob("*.core.zst"))) == 2


def test_readme_systemd_unit_verbatim(installed, sleeper, tmp_path):
    """The README's service: each Exec line as systemd runs it (no shell, its
    standard output discarded), exit 0 and nothing on standard error."""
    unit = next(b for b in _readme_blocks("Unattended runs") if "ExecStart=" in b)
    assert "StandardOutput=null" in unit
    pidfile = tmp_path / "pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    execs = [line.split("=", 1)[1] for line in unit.splitlines()
             if line.startswith(("ExecStart=", "ExecStartPost="))]
    assert len(execs) == 2
    for line in execs:
        argv = shlex.split(_substituted(line, installed, pidfile))
        ran = subprocess.run(argv, env={**CRON, "SNAPCORE_DIR": str(tmp_path / "cores")},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, timeout=120)
        assert (ran.returncode, ran.stderr) == (0, ""), line
    assert len(list((tmp_path / "cores").glob("*.core.zst"))) == 1


def test_readme_runbook_verbatim(installed, sleeper, tmp_path):
    """The README's incident runbook, line by line, with the installed command
    on PATH (as /usr/local/bin is on root's): every line exits 0."""
    runbook = next(b for b in _readme_blocks("Unattended runs") if "snapcore check" in b)
    pidfile = tmp_path / "pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    env = {"PATH": f"{installed.parent}:/usr/bin:/bin", "SNAPCORE_DIR": str(tmp_path / "c")}
    lines = [line.split("#")[0].strip() for line in runbook.splitlines() if line.strip()]
    assert len(lines) == 5
    for line in lines:
        line = re.sub(r" postgres$", f" {sleeper.pid}", _substituted(line, installed, pidfile))
        ran = _run(["/bin/sh", "-c", line], env=env)
        assert ran.returncode == 0, (line, ran.stdout, ran.stderr)
