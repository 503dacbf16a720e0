"""Raw pixels: the baseline backbone every representation must beat (no
pretraining; it has no parameters and no loss).

  python main.py --config=configs/linear_probe.py:pixels_tiny --workdir=workdirs/pixels_tiny_probe

pixels_tiny: a linear classifier on the 64x64x3 = 12288 pixels in [-1, 1] of
the tiny setting's data, with the same steps, batch and optimizer as the
tiny probes of learned features (configs/linear_probe.py), without the
whitening (a 12288 x 12288 whitening, 600 MB, from a covariance of rank <
whiten_examples would be neither cheap nor well-defined).
"""

from __future__ import annotations

import ml_collections

from configs import common, patchformer

LINEAR_PROBE_VARIANTS = ('tiny',)


def linear_probe_config(variant: str) -> ml_collections.ConfigDict:
  del variant  # 'tiny': the data and probe of the tiny setting
  c = common.linear_probe_config(patchformer.get_config('tiny'), tiny=True)
  c.backbone = ml_collections.ConfigDict(dict(
      objective='pixels', data=dict(image_size=c.data.get_ref('image_size'))))
  c.classifier.representation = 'pixels'
  c.classifier.whiten = False
  return c
