"""Training-side API for algorithm authors (``training.md`` §2.4, §3.7–§3.9)."""
