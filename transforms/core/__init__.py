"""Pure logic: the records that travel, task specs, words, windows, spans, qualifiers, fault
rules. Imports neither Beam, torch nor any I/O library (``tests/test_layers.py``)."""
