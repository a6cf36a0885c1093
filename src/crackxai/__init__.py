"""crackxai: explainable concrete-crack classification.

Importing the package has no side effects; the entry points (crackxai.cli) set up logging and
filter TensorFlow's start-up noise.
"""
