"""snapcore: a core dump of a live process, paused only for as long as a fork."""

__version__ = "0.1.0"
