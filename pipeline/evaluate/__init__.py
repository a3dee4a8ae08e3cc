"""Measuring generated pieces: metrics, baselines, harmony and voice leading (the evaluate stage)."""
