"""RandSAC: random hierarchical segments with autoregressive coding.

method.py (the Method: serialisation, loss, representations, pictures),
model.py (the encoder and the masked / masked-skip / two-stream predictors),
segments.py (segments, hierarchies and their serialisation on the device).
"""

from ssl_jax.methods.randsac.method import RandSAC as METHOD

__all__ = ['METHOD']
