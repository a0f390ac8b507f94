"""Metrics for judging generated images and masks."""
