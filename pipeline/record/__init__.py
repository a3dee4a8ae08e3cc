"""The record of the runs: MLflow tracking, the gallery, comparison views and the UI."""
