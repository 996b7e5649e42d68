"""Shared, model-agnostic layers (torch only)."""
