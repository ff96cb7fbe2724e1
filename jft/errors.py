"""The error type for bad input: a message that says what was wrong and how to fix it."""

import difflib
from collections.abc import Iterable


class JftError(ValueError):
    """Bad input from the user (config, files, shapes). The CLI prints it without a traceback."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest valid name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
