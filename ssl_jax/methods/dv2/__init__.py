"""DV2: double view network with dynamic vocabulary (DV2 3.3-3.6): the
Selfie-variant baseline and its adaptations (double view, hybrid
self-attention, dynamic vocabulary, transformed views).

method.py (the Method: masks, the losses L_mp, L_mi, L_vp, L_vi, the
switches of the ablation, representations), model.py (the network: the
pre-activation ResNet of ssl_jax.nn.resnet_v2 as patch and image network,
the context transformer with [IMG], the projections), vocabulary.py (the
dynamic vocabulary: non-gradient state, its update and its loss).
"""

from ssl_jax.methods.dv2.method import DV2 as METHOD

__all__ = ['METHOD']
