"""The exit-code tables each command's --help ends with (README.md "Exit
codes" and the man page's EXIT STATUS give the whole of each).
"""

EXIT_CODES_HELP = """\b
Exit codes:
  0  snapshot taken (check: would go ahead)
  1  internal error          8  kernel wrote no core
  2  bad command line        9  core handed to a core_pattern pipe
  3  no such process        10  output directory unusable or full
  4  permission denied      11  not enough memory headroom
  5  busy (already traced)  12  rate limit reached
  6  target not supported   13  too near its task limits
  7  target did not stop    14  gdb missing or failed
                            15  watch: process ended, nothing fired
                           130  interrupted (target released)"""

# info and debug only read snapshots: their own codes, not a snapshot's.
INFO_EXIT_CODES_HELP = """\b
Exit codes:
  0  the record (or, without one, the core's notes) was shown
  1  internal error                3  no snapshot matches
  2  bad command line            130  interrupted"""

DEBUG_EXIT_CODES_HELP = """\b
Exit codes: gdb's own status once gdb runs; before that:
  1  internal error               10  the core is missing or damaged
  2  bad command line, or the     14  gdb is missing
     executable is unknown (--exe)
  3  no snapshot matches         130  interrupted"""
