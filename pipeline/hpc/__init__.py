"""Batch systems: plan a release's node-hours, and submit skysieve itself as a job."""
