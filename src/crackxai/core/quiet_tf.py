"""TensorFlow's C++ start-up notices kept off the user's terminal.

On CPUs with AVX-512, `import tensorflow` prints "oneDNN custom operations are on ..." (twice)
through absl before any log level applies: TF_CPP_MIN_LOG_LEVEL cannot silence it, and every stage
would open with four lines of noise, even above a one-line configuration error. `install()` makes
the first `import tensorflow` run with stderr (file descriptor 2, where C++ writes) captured, then
writes back every line except those notices, so real errors and warnings still show.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                   rb"|I0000 .*\] oneDNN custom operations are on)")


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[bytes] = NOISE) -> Iterator[None]:
    """Capture fd 2 for the block; afterwards write back the lines that do not match `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not noise.match(line)]
            if kept:
                os.write(2, b"".join(kept))


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec):  # noqa: ANN201 - module
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001 - a module
        with filtered_stderr():
            self._loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path=None, target=None):  # noqa: ANN001, ANN201 - import API
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders do the lookup
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Filter the notices of the first `import tensorflow` in this process (no-op after it), and
    keep TF's C++ INFO/WARNING logs off unless the user set TF_CPP_MIN_LOG_LEVEL."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
