"""Attacks on perceptual similarity metrics, and robust metrics, with PyTorch Lightning."""
__version__ = "0.1.0"
