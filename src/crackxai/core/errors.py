"""The one exception type a stage turns into a short, user-facing error instead of a traceback."""


class CrackxaiError(Exception):
    """Bad input or environment: the message names the file/key and the fix."""


class ConfigError(CrackxaiError):
    """An invalid configuration value, override or parameter file."""


class DataError(CrackxaiError):
    """Missing, unreadable or unusable data."""


class DiskFullError(CrackxaiError):
    """No space left on the device an output is written to."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library (h5py) kept only the text of the OS error."""
    import errno

    return isinstance(exc, OSError) and (
        exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc))


def disk_full(path: object) -> DiskFullError:
    """The one-paragraph error for an output that did not fit on its device."""
    return DiskFullError(
        f"No space left on device while writing '{path}'. The previous output at that path is "
        "unchanged (outputs replace the old ones only once complete) and the partial temporary "
        "files were removed: free space on that disk (or move the project to a larger one) and "
        "rerun.")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message for a one-paragraph error, or its type's name:
    str(KeyError()) is "" (and `str(exc).splitlines()[0]` would itself raise IndexError)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
