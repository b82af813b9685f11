"""Deterministic simulation of whole clusters over the sans-IO cores."""
