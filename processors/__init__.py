"""Media I/O, frame samplers, frame preprocessing and synthetic media."""
