"""Evaluation: scores, metrics and plots of a classifier on labelled images."""
