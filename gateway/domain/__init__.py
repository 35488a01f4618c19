"""Pure domain core: dataclasses in, decisions out. Imports no I/O library."""
