"""A Runner.py in a sub-folder does not count; the root has none."""
