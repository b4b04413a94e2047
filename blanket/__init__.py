"""blanket: backups restorable from the first committed pack."""

__version__ = "0.1.0"  # as in pyproject.toml (tests/test_startup.py checks)
