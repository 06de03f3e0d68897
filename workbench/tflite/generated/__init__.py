"""Generated code (flatc output for TFLite's metadata schema): regenerated, never edited.

Excluded from ruff and mypy (pyproject.toml); `workbench.tflite.metadata` is its one user.
"""
