"""The multi-task ViT: contrastive, rotation, colorization, inpainting,
relative position and jigsaw trained at once on one ViT.

method.py (the Method: passes, losses, weighting, gradient diagnostics,
representations, pictures), model.py (the ViT of ssl_jax.nn.vit with its
task tokens and heads), tasks.py (the transformations and labels, drawn on
the device).
"""

from ssl_jax.methods.multitask_vit.method import MultiTaskViTMethod as METHOD

__all__ = ['METHOD']
