"""Methods: one package per paper behind the declared interface of base.py,
found by name through registry.py (see the README's layout section for
adding one)."""
