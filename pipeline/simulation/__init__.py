"""Synthetic skies with known truth: the survey, the wide (randomised) domain, pointed exposures."""
