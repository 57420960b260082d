"""The foundation every stage stands on: errors, input validation, atomic writes, progress, paths.

Imports nothing else of kvconvert (the layering is tested in tests/test_layout.py)."""
