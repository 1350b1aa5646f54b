"""Names resolved the way another process sees them: openat2(2).

A path under /proc/PID/root is walked by the kernel from the target's root,
but an absolute symlink met on the way starts again from *snapcore's* root:
a container's `/var/tmp -> /etc` would be the host's /etc.  openat2 with
RESOLVE_IN_ROOT resolves every symlink and `..` inside the directory given,
as a chroot would (fs/namei.c: `nd_jump_root`); RESOLVE_NO_SYMLINKS refuses
any symlink on the way.  Python has no wrapper (syscall 437, Linux 5.6+).
"""

from __future__ import annotations

import ctypes
import os
import re

from snapcore.linux.arch import NR_OPENAT2

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02  # no /proc/PID/fd/N, /proc/PID/root and the like
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """A descriptor for `path` relative to `dir_fd`; OSError as os.open raises it."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(ctypes.c_long(NR_OPENAT2), ctypes.c_int(dir_fd),
                       ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def open_in_root(root_fd: int, path: str, flags: int = os.O_RDONLY | os.O_DIRECTORY,
                 *, symlinks: bool = True) -> int:
    """`path` as a process whose root is `root_fd` sees it: every symlink and
    `..` stays inside that root; never through a magic link.  symlinks=False:
    refused (ELOOP) when any component is a symlink."""
    resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
    if not symlinks:
        resolve |= RESOLVE_NO_SYMLINKS
    return openat2(root_fd, path, flags, resolve)


def fd_path(fd: int) -> str:
    """What the kernel calls the file behind `fd` (d_path: for a file of
    another mount namespace, its path in that namespace)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def path_in_root(root_fd: int, fd: int) -> str | None:
    """The name of directory `fd` inside the root `root_fd` with no symlink on
    the way, checked by opening it so (RESOLVE_NO_SYMLINKS) and finding the
    very same directory; None when it has no such name."""
    root, here = fd_path(root_fd), fd_path(fd)
    if root == "/":
        name = here
    elif here == root:
        name = "/"
    elif here.startswith(root + "/"):
        name = here[len(root):]
    else:
        return None
    try:
        again = open_in_root(root_fd, name, os.O_PATH | os.O_DIRECTORY, symlinks=False)
    except OSError:
        return None
    try:
        return name if os.path.samestat(os.fstat(again), os.fstat(fd)) else None
    finally:
        os.close(again)


def open_as_seen(path: str, flags: int = os.O_RDONLY | os.O_DIRECTORY) -> int:
    """`path` opened; under /proc/PID/root, resolved inside that root, as the
    process PID sees the rest of it."""
    inside = re.fullmatch(r"(/proc/\d+/root)(/.*)?", path)
    if inside is None:
        return os.open(path, flags | os.O_CLOEXEC)
    root_fd = os.open(inside[1], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_in_root(root_fd, inside[2] or "/", flags)
    finally:
        os.close(root_fd)
