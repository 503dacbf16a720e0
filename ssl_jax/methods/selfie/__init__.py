"""Selfie and Allp (DV2 3.1, 3.2): masked patch prediction by query-key
correspondence, and an image vector pooled from patches alone.

method.py (the Method: masks, losses, representations), model.py (the
network: the pre-activation ResNet patch network of ssl_jax.nn.resnet_v2 and
the context transformer of ssl_jax.nn.patch_context, shared with DV2).
"""

from ssl_jax.methods.selfie.method import Selfie as METHOD

__all__ = ['METHOD']
