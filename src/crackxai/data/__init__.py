"""Data: sources (synthetic, kaggle, local), decoding, the manifest, curation and the processed format."""
