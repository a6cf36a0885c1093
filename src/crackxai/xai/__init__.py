"""Explainable AI: explanation methods, their quality metrics, rendering and the report."""
