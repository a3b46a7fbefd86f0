"""After training: generation, task evaluation against ground truth."""
