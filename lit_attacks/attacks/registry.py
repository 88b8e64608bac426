"""The attack registry: every attack registers itself where it is defined (``@ATTACKS.register("pgd")``)."""
from lit_attacks.registry import Registry

ATTACKS = Registry("attack")
