"""Evaluation: sample-quality metrics and evaluation drivers."""
