"""Raw pixels: the baseline backbone (no parameters, no loss)."""

from ssl_jax.methods.pixels.method import Pixels as METHOD

__all__ = ['METHOD']
