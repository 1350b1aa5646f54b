"""What the kernel offers, wrapped: ptrace (the only module that calls it),
injected syscalls and stop windows, /proc, seccomp cBPF, rseq, cgroups, and
the architecture's numbers."""
