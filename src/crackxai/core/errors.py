"""The one exception type a stage turns into a short, user-facing error instead of a traceback."""


class CrackxaiError(Exception):
    """Bad input or environment: the message names the file/key and the fix."""


class ConfigError(CrackxaiError):
    """An invalid configuration value, override or parameter file."""


class DataError(CrackxaiError):
    """Missing, unreadable or unusable data."""
