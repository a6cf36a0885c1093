"""The one exception type a stage turns into a short, user-facing error instead of a traceback."""


class CrackxaiError(Exception):
    """Bad input or environment: the message names the file/key and the fix."""


class ConfigError(CrackxaiError):
    """An invalid configuration value, override or parameter file."""


class DataError(CrackxaiError):
    """Missing, unreadable or unusable data."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message for a one-paragraph error, or its type's name:
    str(KeyError()) is "" (and `str(exc).splitlines()[0]` would itself raise IndexError)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
