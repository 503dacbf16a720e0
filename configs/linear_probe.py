r"""Linear probe: a linear classifier on a frozen pretrained representation.

The same loop and train step as pretraining: the backbone's parameters are
restored from a pretraining checkpoint and frozen (no update, no optimizer
state); only the classifier trains, on stop-gradient features of the named
representation computed in evaluation mode (no masking, centre crops) from
augmented images (random resized crop and flip). Top-1 and top-5 on the
evaluation split are written to eval.json / eval.md in the workdir.

Commands (after pretraining with configs/patchformer.py:tiny into
workdirs/patchformer_tiny; about 3 minutes on 2 CPU cores):

  python main.py --config=configs/linear_probe.py:patchformer_tiny \
      --config.init.workdir=workdirs/patchformer_tiny --workdir=workdirs/patchformer_tiny_probe

  # The paper's network on ImageNet (v3-32, every host):
  python main.py --config=configs/linear_probe.py:patchformer \
      --config.init.workdir=gs://BUCKET/patchformer --workdir=gs://BUCKET/patchformer_probe \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Variants:
  patchformer_tiny  the network of configs/patchformer.py:tiny, on ssl_jax_shapes.
  patchformer       the paper's network on imagenet2012 (224x224).
  pixels_tiny       the baseline: a linear classifier on raw pixels
                    (64x64x3 = 12288 inputs), same data, steps and optimizer.
Without --config.init.workdir the backbone is randomly initialised (the
random-features baseline). Pick the layer with --config.classifier.representation
(PatchFormer: attention_pool, tokens, patch_embed, layer_1..layer_L). If the
pretraining run changed the network (--config.patchformer.model.KEY=...),
pass the same overrides as --config.backbone.patchformer.model.KEY=...; a
mismatch is reported before anything compiles.

Choices (PatchFormer reports no linear probe): AdamW without weight decay,
cosine schedule; ImageNet: batch 1024, lr 1e-3, 30k steps (24 epochs), the
top-1 / top-5 on the 50k validation images with the 0.875 centre crop.
tiny: batch 64, lr 3e-3, 400 steps, top-1 on 1000 test images.
Expected result (tiny): see benchmarks/evaluation.py, which prints
pretrained vs random-init vs raw-pixel probes measured on this setting.
"""

from __future__ import annotations

import ml_collections

from configs import common, patchformer

VARIANTS = ('patchformer_tiny', 'patchformer', 'pixels_tiny')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.variant(arg or None, VARIANTS, 'linear_probe.py')
  tiny = variant.endswith('_tiny')
  c = common.classification_config(patchformer.get_config('tiny' if tiny else ''),
                                   mode='linear')
  c.optimizer.update(dict(weight_decay=0.0, grad_clip_norm=None))
  if tiny:
    c.total_steps = 400
    c.batch_size = 64
    c.optimizer.update(dict(lr=3e-3, warmup_steps=20))
    c.log_every = 20
    c.checkpoint.every = 200
  else:
    c.total_steps = 30_000
    c.batch_size = 1024
    c.optimizer.update(dict(lr=1e-3, warmup_steps=1000))
    c.eval.split = 'validation'
    c.eval.every = 5000
  if variant.startswith('pixels'):
    c.backbone = ml_collections.ConfigDict(dict(
        objective='pixels', data=dict(image_size=c.data.get_ref('image_size'))))
    c.classifier.representation = 'pixels'
  return c
