"""A run folder: atomic writes, the model card, run naming, reading a finished run back."""
