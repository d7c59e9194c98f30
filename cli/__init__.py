"""The factstore command line: one command group per file, each command a thin layer over the library."""
