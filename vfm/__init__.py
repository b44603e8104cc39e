"""vfm: video foundation models."""
