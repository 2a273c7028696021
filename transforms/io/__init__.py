"""Storage and I/O on any fsspec store: atomic writes, input listing and completion markers,
the output's lock, the opt-in outputs' files, progress lines. No Beam, no torch."""
