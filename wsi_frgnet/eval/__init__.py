"""Judging a model: PQ / AJI metrics, scoring a labelled folder."""
