"""The YAML presets: ``bench/`` (one per paper table or protocol) and ``train/``, shipped as package data."""
