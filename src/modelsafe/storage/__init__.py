"""Where bytes go: local files (atomic, durable) and, later, fsspec object stores."""
