"""Evaluate: benchmark datasets and ground truth, metrics, scoring, and pictures of flow."""
