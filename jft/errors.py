"""The error type for bad input: a message that says what was wrong and how to fix it."""

import difflib
import signal
from collections.abc import Iterable


class JftError(ValueError):
    """Bad input from the user (config, files, shapes). The CLI prints it without a traceback and
    exits with exit_code."""

    exit_code = 2


class RunFailed(JftError):
    """A run that could not go on (its updates kept failing, the disk is full); the CLI exits with 1."""

    exit_code = 1


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest valid name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def first_few(items: list, separator: str = ", ", most: int = 5) -> str:
    """The first `most` items joined, and how many more there are: 'a, b, c, d, e and 3 more'."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return choices(items[:most], separator) + more


def choices(values, separator: str = ", ") -> str:
    """Values as a message lists them: 'a, b, c' (not a Python tuple or list)."""
    return separator.join(map(str, values))


class RunStopped(Exception):
    """A run stopped by a signal after saving a checkpoint; the CLI exits with 128 + the signal
    (130 for SIGINT, 143 for SIGTERM), as shells expect, so that `a && b` does not go on."""

    def __init__(self, signum: signal.Signals, step: int | None, kept: str = "saved a checkpoint"):
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"stopped by {signum.name}{where}; {kept}; run the same command to resume")
        self.signal, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)
