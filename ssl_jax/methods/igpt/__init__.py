"""iGPT: autoregressive and BERT objectives over a colour palette.

method.py (the Method: tokens, losses, representations, sampling,
pictures), model.py (the GPT-2-style transformer of the released model, with
a key/value cache), palette.py (k-means palettes: fitting, files,
(de)quantisation; `python -m ssl_jax.methods.igpt.palette`).
"""

from ssl_jax.methods.igpt.method import IGPT as METHOD

__all__ = ['METHOD']
