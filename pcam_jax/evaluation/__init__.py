"""Evaluation: classification and localisation metrics, reports, figures and the analysis API."""
