"""The errors every CLI turns into a one-line message and an exit code."""


class UsageError(ValueError):
    """Bad user input (unknown game, impossible sizes, unusable file or config). CLIs print it on one line, exit 2."""
