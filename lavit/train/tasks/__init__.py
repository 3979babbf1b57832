"""Training stages for the shared trainer, one task per file."""
