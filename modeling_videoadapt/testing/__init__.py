"""Test and demo helpers: tiny random checkpoints of real transformers classes, built offline."""
