"""crackxai: explainable concrete-crack classification."""
