"""Synthetic surveys with known truth: survey exposures, pointed exposures, source builders, the instrument."""
