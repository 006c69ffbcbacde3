"""Checkpoint conversion between HF (PyTorch) folders and JAX parameter trees."""
