"""Cross-cutting plumbing: errors, atomic I/O, logging, entry points, project layout."""
