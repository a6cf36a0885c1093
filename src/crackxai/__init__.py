"""crackxai: explainable concrete-crack classification."""

from crackxai.quiet_tf import install as _quiet_tensorflow

_quiet_tensorflow()
