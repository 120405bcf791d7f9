"""Errors that the CLI turns into a one-line message and exit status 2."""


class UsageError(Exception):
    """Bad input from the person or script at the keyboard: say what, exit 2."""
