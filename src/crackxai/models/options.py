"""Allowed values of the model and training settings, import-light: the config layer validates
train.* against them without importing TensorFlow."""

from __future__ import annotations

# train.distribution: how many processes and devices one training step spans
# (crackxai.models.distribute)
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
