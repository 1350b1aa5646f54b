#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: the snapcore authors
# MIT License (see the LICENSE of the snapcore repository)

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r'''
---
module: snapcore
short_description: Take a core dump of a live process without stopping it
version_added: "0.1.0"
description:
  - Runs the C(snapcore) command installed on the managed host with C(--json)
    and returns its JSON document as the result.
  - snapcore pauses the process only for as long as a C(fork) takes
    (milliseconds); a copy-on-write child of it is dumped by the kernel while
    the process keeps running. The process gets no signal and no child it can
    see, and is never left stopped.
  - Every check C(snapcore check) runs (permission, tracer, state, seccomp,
    dumpable, core_pattern, core limit, output directory, disk, memory, tasks,
    rate limit) runs first; a refusal leaves the process exactly as it was and
    fails the task with snapcore's one-line reason and its exit code in C(rc).
  - In check mode the module runs C(snapcore check --json) instead and reports
    the verdict (C(would_snapshot), C(checks)) without taking a snapshot. The
    process is stopped for a moment only when it has seccomp filters (to read
    them); nothing is written.
  - Give exactly one of O(pid), O(name), O(pidfile) or O(unit), as with the
    command line.
options:
  pid:
    description:
      - The process id of the process to snapshot.
    type: int
  name:
    description:
      - A regular expression matched against every process's name and command
        line, like C(pgrep); C(snapcore --name).
      - Several matching processes are refused, listing them, unless O(all).
    type: str
  all:
    description:
      - With O(name), snapshot every matching process, one after another
        (C(snapcore --all)). The result's RV(snapshots) lists each.
      - Not in check mode, where C(snapcore check) judges one process; a pattern
        matching several then fails the check with snapcore's message.
    type: bool
    default: false
  pidfile:
    description:
      - A file holding the pid of the process (C(snapcore --pidfile)). A stale
        pidfile fails the task (exit code 3).
    type: path
  unit:
    description:
      - A systemd service whose main process to snapshot (C(snapcore --unit),
        through C(systemctl show -p MainPID)). Needs a host that runs systemd.
    type: str
  reason:
    description:
      - Why the snapshot is taken (an incident id), kept in the record beside
        the core (C(snapcore --reason)).
    type: str
  output_dir:
    description:
      - Where the core and its record go on the host, created 0700 when missing
        (C(snapcore -o)).
      - Default, as for the command line, C($SNAPCORE_DIR), else
        C(/var/lib/snapcore) for root.
    type: path
  compress:
    description:
      - Store the core as C(NAME.core.zst) (zstandard, at idle priority;
        C(snapcore --compress)). Needs the C(compress) extra of snapcore
        (zstandard) on the host.
    type: bool
    default: false
  writer:
    description:
      - Who writes the core (C(snapcore --writer)). Passed to snapcore only
        when set.
      - V(auto), snapcore's default, lets the kernel write where core_pattern
        writes a file, and snapcore's own writer elsewhere (a crash handler's
        pipe, a hard RLIMIT_CORE of 0, O(compress)); V(kernel) hands the core
        to a pipe handler where there is one (snapcore then exits 9, which
        this module does not count as a failure).
    type: str
    choices: [auto, kernel, snapcore]
  force:
    description:
      - Checks to go ahead despite (C(snapcore --force CHECK), once each).
        Never a blanket override; only C(dumpable), C(output-dir), C(disk),
        C(memory), C(tasks) and C(rate-limit) can be forced, and snapcore
        refuses any other name (exit code 2).
      - In check mode, a refusal by a check named here does not fail the task;
        it is listed in RV(forced).
    type: list
    elements: str
    default: []
  stacks:
    description:
      - Also read every thread's backtrace from the core with gdb
        (C(snapcore --stacks)); returned in RV(stacks). gdb must be installed
        on the host; when it is missing or fails, the snapshot is kept and the
        task warns.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for every thread to stop (C(snapcore --timeout));
        snapcore's default is 2.
    type: float
  min_free:
    description:
      - Free space to leave on the output filesystem after the core, a size
        (C(2G)) or a percentage (C(10%)) (C(snapcore --min-free)); snapcore's
        default is C(10%).
    type: str
  max_per_hour:
    description:
      - At most this many snapshots of the same program per hour, C(0) for no
        limit (C(snapcore --max-per-hour)); snapcore's default is 4.
    type: int
  executable:
    description:
      - The snapcore command to run.
      - Default, C(snapcore) found on the host's C(PATH), in C(/usr/local/bin)
        or in C(/opt/snapcore/bin) (where snapcore's C(install.sh) puts it).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Runs C(snapcore check), which writes nothing and takes no snapshot.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux on x86_64, as snapcore itself.
requirements:
  - snapcore installed on the managed host (C(sh install.sh) from its source
    tree installs it under C(/opt/snapcore) with the command in
    C(/usr/local/bin)).
  - root or CAP_SYS_PTRACE on the managed host for another user's process
    (use O(ignore:become=true)).
notes:
  - The core and its record stay on the managed host, in O(output_dir). The
    collection's playbook C(snapcore.snapcore.snapshot) takes a snapshot on
    every host of a group and fetches them to the controller.
  - The exit codes in RV(rc) are snapcore's, listed in C(man snapcore); for
    example 3 no such process, 5 already traced, 6 target not supported
    (zombie, stopped), 10 output directory unusable, 11 not enough memory,
    12 rate limit.
  - A core handed to a C(core_pattern) pipe handler (systemd-coredump,
    apport) is a snapshot taken (exit code 9 is not a failure here); the task
    warns with how to look the core up.
  - The command line this module runs is described in C(man snapcore) on the
    host, and C(snapcore --help).
author:
  - snapcore maintainers (!UNKNOWN)
'''

EXAMPLES = r'''
- name: Snapshot nginx's master process on every web node
  snapcore.snapcore.snapcore:
    name: 'nginx: master'
    reason: INC-4711
  become: true
  register: snap

- name: Say where the core is
  ansible.builtin.debug:
    msg: "{{ snap.core_path }} ({{ snap.core_size }} bytes), paused {{ snap.pause_ms }} ms"

- name: Snapshot the main process of a systemd service, compressed, into a directory of its own
  snapcore.snapcore.snapcore:
    unit: postgresql.service
    reason: checkpoint stall
    output_dir: /srv/cores
    compress: true
  become: true

- name: A process by its pidfile, going ahead although the rate limit is reached
  snapcore.snapcore.snapcore:
    pidfile: /run/app.pid
    reason: INC-4712
    force: [rate-limit]
  become: true

- name: Would a snapshot go ahead? (check mode runs snapcore check and takes none)
  snapcore.snapcore.snapcore:
    name: 'postgres: checkpointer'
  check_mode: true
  become: true
  register: verdict

- name: Every worker matching a pattern, with their stacks
  snapcore.snapcore.snapcore:
    name: 'gunicorn: worker'
    all: true
    stacks: true
    reason: INC-4713
  become: true
  register: workers

- name: A snapcore outside the usual places
  snapcore.snapcore.snapcore:
    pid: 4242
    executable: /home/ops/venv/bin/snapcore
'''

RETURN = r'''
cmd:
  description: The snapcore command line that ran.
  returned: always
  type: list
  elements: str
  sample: [/usr/local/bin/snapcore, snap, --json, --reason, INC-4711, --name, 'nginx: master']
rc:
  description:
    - snapcore's exit code (C(0) a snapshot taken, or in check mode one would
      go ahead; otherwise the first refusal's).
  returned: when snapcore ran
  type: int
  sample: 6
msg:
  description: On failure, snapcore's one-line reason and fix.
  returned: failure
  type: str
  sample: "process 4242 (app) is a zombie: nothing to snapshot"
error:
  description:
    - On failure, snapcore's error document (C(error), C(message), C(hint),
      C(pid), C(stage), C(setting), C(override), C(exit_code)).
  returned: failure, when snapcore gave one
  type: dict
ok:
  description: snapcore's own verdict on the whole run.
  returned: when snapcore printed a document
  type: bool
core_path:
  description:
    - The core on the managed host; null when a C(core_pattern) pipe
      handler took it. With several snapshots, see RV(snapshots).
  returned: success, one snapshot
  type: str
  sample: /var/lib/snapcore/20261127T044747.396Z_nginx_3286.core
core_size:
  description: The core's size in bytes.
  returned: success, one snapshot
  type: int
  sample: 450560
record_path:
  description: The record beside the core (JSON, 0600).
  returned: success, one snapshot
  type: str
  sample: /var/lib/snapcore/20261127T044747.396Z_nginx_3286.json
core:
  description: The core as snapcore reports it (C(path), C(size), C(record)).
  returned: success, one snapshot
  type: dict
target:
  description:
    - The process (C(pid), C(name), C(exe), C(uid); in check mode also
      C(threads)).
  returned: success, one snapshot; check mode
  type: dict
  sample: {pid: 3286, name: nginx, exe: /usr/sbin/nginx, uid: 0}
pause_ms:
  description: How long the process was paused, in milliseconds.
  returned: success, one snapshot
  type: float
  sample: 0.57
pause_split_ms:
  description: The pause split into C(capture), C(fork) and C(release).
  returned: success, one snapshot
  type: dict
reap_pause_ms:
  description:
    - The second pause of a namespace init or subreaper target, which reaps
      the child after the dump (0 for other processes).
  returned: success, one snapshot
  type: float
dump_seconds:
  description: How long the kernel took to write the core.
  returned: success, one snapshot
  type: float
threads:
  description: How many threads the process had, each in the core.
  returned: success, one snapshot
  type: int
  sample: 9
thread_map:
  description: For each thread, C(tid), C(name), C(core_lwp) and C(child_tid).
  returned: success, one snapshot
  type: list
  elements: dict
taken_at:
  description: When the snapshot was taken (UTC, ISO 8601).
  returned: success, one snapshot
  type: str
  sample: "2026-11-27T04:47:47.396518Z"
core_estimate:
  description: The core's estimated size in bytes, from the process's memory map.
  returned: success, one snapshot; check mode
  type: int
checks:
  description:
    - Every check, each with C(name), C(verdict) (ok, warn, refuse),
      C(reason), C(fix), C(setting) and C(forceable).
  returned: success, one snapshot; check mode
  type: list
  elements: dict
notes:
  description: What snapcore noticed about the snapshot (for example a child left unreaped).
  returned: success, one snapshot
  type: list
  elements: str
regions_missing:
  description: Memory regions absent from the core (MADV_DONTFORK) or zeros in it (MADV_WIPEONFORK).
  returned: success, one snapshot
  type: list
  elements: dict
core_pattern:
  description: The kernel's core_pattern as snapcore met it (C(kind), C(pattern)).
  returned: success, one snapshot
  type: dict
stacks:
  description: Every thread's backtrace from the core (gdb), with O(stacks).
  returned: success, with O(stacks) and gdb working
  type: str
snapshots:
  description:
    - Each snapshot's document (or C({ok false, error}) for a refusal), in
      the order taken; one item unless O(all) matched several processes.
  returned: when snapcore took or refused a snapshot
  type: list
  elements: dict
would_snapshot:
  description: (check mode) Whether snapcore would take the snapshot, by its own checks.
  returned: check mode
  type: bool
  sample: true
exit_code:
  description: (check mode) The exit code the first refusal would give, else 0.
  returned: check mode
  type: int
forced:
  description:
    - (check mode) Checks that refuse but are named in O(force), so would not
      stop the snapshot.
  returned: check mode
  type: list
  elements: str
'''

import json

from ansible.module_utils.basic import AnsibleModule

INSTALL_HINT = ("install it on the host: from a snapcore source tree, as root, "
                "`sh install.sh` (a virtualenv in /opt/snapcore, the command in "
                "/usr/local/bin); or give its path with executable=")
SEARCHED = ["/usr/local/bin", "/opt/snapcore/bin"]


def one_line(error):
    """snapcore's one line for an error document: the problem, then the fix."""
    message = error.get("message") or "snapcore failed"
    hint = error.get("hint")
    return "%s: %s" % (message, hint) if hint else message


def find_snapcore(module):
    exe = module.params["executable"]
    if exe:
        if module.get_bin_path(exe) is None:
            module.fail_json(msg="snapcore not found at %s: %s" % (exe, INSTALL_HINT))
        return exe
    found = module.get_bin_path("snapcore", opt_dirs=SEARCHED)
    if found is None:
        module.fail_json(msg="snapcore is not installed on this host (not on PATH, nor in "
                             "%s): %s" % (" or ".join(SEARCHED), INSTALL_HINT))
    return found


def command(module, exe):
    p = module.params
    checking = module.check_mode
    cmd = [exe, "check" if checking else "snap", "--json"]
    if p["output_dir"]:
        cmd += ["-o", p["output_dir"]]
    if p["timeout"] is not None:
        cmd += ["--timeout", str(p["timeout"])]
    if p["min_free"] is not None:
        cmd += ["--min-free", p["min_free"]]
    if p["max_per_hour"] is not None:
        cmd += ["--max-per-hour", str(p["max_per_hour"])]
    if not checking:
        if p["reason"]:
            cmd += ["--reason", p["reason"]]
        if p["compress"]:
            cmd.append("--compress")
        if p["writer"]:
            cmd += ["--writer", p["writer"]]
        for name in p["force"]:
            cmd += ["--force", name]
        if p["stacks"]:
            cmd.append("--stacks")
    if p["name"] is not None:
        cmd += ["--name", p["name"]]
        if p["all"] and not checking:
            cmd.append("--all")
    if p["pidfile"]:
        cmd += ["--pidfile", p["pidfile"]]
    if p["unit"]:
        cmd += ["--unit", p["unit"]]
    if p["pid"] is not None:
        cmd.append(str(p["pid"]))
    return cmd


def parse(module, cmd, rc, out, err):
    try:
        doc = json.loads(out)
        if isinstance(doc, dict):
            return doc
    except ValueError:
        pass
    lines = [line for line in (err or "").splitlines() if line.strip()]
    module.fail_json(msg="snapcore printed no JSON document (exit code %d)%s"
                         % (rc, ": " + lines[-1] if lines else ""),
                     rc=rc, cmd=cmd, stdout=out, stderr=err)


def report_check(module, cmd, rc, doc, err):
    """Check mode: the verdict of `snapcore check`, nothing taken."""
    result = dict(doc, cmd=cmd, rc=rc, changed=False)
    if "error" in doc:
        module.fail_json(msg=one_line(doc["error"]), **result)
    forced = set(module.params["force"])
    refusals = [c for c in doc.get("checks", []) if c.get("verdict") == "refuse"]
    result["forced"] = [c["name"] for c in refusals
                        if c["name"] in forced and c.get("forceable")]
    remaining = [c for c in refusals if c["name"] not in result["forced"]]
    if remaining:
        first = remaining[0]
        why = "%s: %s" % (first["reason"], first["fix"]) if first.get("fix") else first["reason"]
        module.fail_json(msg="a snapshot would be refused (%s): %s" % (first["name"], why),
                         **result)
    result["changed"] = True  # a snapshot would be taken
    # Ansible takes a result with a non-zero rc for a failure unless told
    # otherwise: here rc is that of a refusal named in force.
    module.exit_json(failed=False, **result)


def report_snap(module, cmd, rc, doc, err):
    snapshots = doc["snapshots"] if "snapshots" in doc else [doc]
    result = dict(cmd=cmd, rc=rc, snapshots=snapshots,
                  changed=any(s.get("ok") for s in snapshots))
    if "snapshots" in doc:
        result["ok"] = doc.get("ok")
    else:
        result.update(doc)
        if doc.get("ok"):
            core = doc.get("core") or {}
            result.update(core_path=core.get("path"), core_size=core.get("size"),
                          record_path=core.get("record"))
    warnings = []
    for snap in snapshots:
        if not snap.get("ok"):
            continue
        target = snap.get("target", {})
        which = "%s (pid %s)" % (target.get("name"), target.get("pid"))
        pattern = snap.get("core_pattern") or {}
        if snap.get("core") is None and pattern.get("kind") == "pipe":
            warnings.append("the core of %s was handed to %s by core_pattern: %s"
                            % (which, pattern.get("handler"), pattern.get("lookup")))
        if snap.get("stacks_error"):
            warnings.append("no stacks for %s: %s" % (which, snap["stacks_error"]))
        for check in snap.get("checks", []):
            if check.get("verdict") == "warn":
                warnings.append("%s: %s" % (which, check.get("reason")))
    for warning in warnings:
        module.warn(warning)
    failures = [s["error"] for s in snapshots if not s.get("ok") and "error" in s]
    if "error" in doc:
        failures = [doc["error"]]
    if failures:
        result["error"] = failures[0]
        module.fail_json(msg=one_line(failures[0]), **result)
    # Ansible takes a result with a non-zero rc for a failure unless told
    # otherwise: rc 9 is a snapshot taken, its core handed to a pipe handler.
    module.exit_json(failed=False, **result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pid=dict(type="int"),
            name=dict(type="str"),
            all=dict(type="bool", default=False),
            pidfile=dict(type="path"),
            unit=dict(type="str"),
            reason=dict(type="str"),
            output_dir=dict(type="path"),
            compress=dict(type="bool", default=False),
            writer=dict(type="str", choices=["auto", "kernel", "snapcore"]),
            force=dict(type="list", elements="str", default=[]),
            stacks=dict(type="bool", default=False),
            timeout=dict(type="float"),
            min_free=dict(type="str"),
            max_per_hour=dict(type="int"),
            executable=dict(type="path"),
        ),
        mutually_exclusive=[("pid", "name", "pidfile", "unit")],
        required_one_of=[("pid", "name", "pidfile", "unit")],
        supports_check_mode=True,
    )
    if module.params["all"] and module.params["name"] is None:
        module.fail_json(msg="all applies to name: give name=PATTERN with all=true")
    if module.params["all"] and module.check_mode:
        module.params["all"] = False  # snapcore check judges one process
    exe = find_snapcore(module)
    cmd = command(module, exe)
    rc, out, err = module.run_command(cmd)
    doc = parse(module, cmd, rc, out, err)
    if module.check_mode:
        report_check(module, cmd, rc, doc, err)
    report_snap(module, cmd, rc, doc, err)


if __name__ == "__main__":
    main()
