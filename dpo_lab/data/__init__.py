"""Preference data: sources, row formats, checks, loading and the data report."""
