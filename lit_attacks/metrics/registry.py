"""The metric registry (kept apart so metric modules can import it without cycles)."""
from lit_attacks.registry import Registry

METRICS = Registry("metric")
