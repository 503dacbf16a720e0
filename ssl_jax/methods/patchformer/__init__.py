"""PatchFormer: decoding low-bit grayscale versions of masked patches.

method.py (the Method: masks, targets, loss, representations), model.py (the
network: ResNet patch encoder, transformer, attention pooling, upsampling
decoder), augment.py (per-patch augmentations on the device). Its block
masks are ssl_jax.nn.masks (shared with random-mask methods).
"""

from ssl_jax.methods.patchformer.method import PatchFormer as METHOD

__all__ = ['METHOD']
