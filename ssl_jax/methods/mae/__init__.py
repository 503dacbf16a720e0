"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners"): the
reference baseline. A ViT encoder on the visible 25% of the patches, a
light decoder, normalised-pixel MSE on the masked patches.

method.py (the Method: masking, loss, representations, pictures),
model.py (the encoder of ssl_jax.nn.vit and MAE's decoder).
"""

from ssl_jax.methods.mae.method import MAE as METHOD

__all__ = ['METHOD']
