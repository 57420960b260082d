"""kvconvert's Textual TUI (installed as ``kvconvert.tui``)."""
