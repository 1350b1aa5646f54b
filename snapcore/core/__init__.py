"""Core files: where core_pattern puts them, staging and placement, the notes
rewrite, ELF reading, compression, records and gdb."""
