r"""Selfie and Allp pretraining (DV2 sections 3.1, 3.2; Table 1: CIFAR-10).

Commands:

  # Laptop / CI: the built-in offline dataset on 2 CPU cores.
  python main.py --config=configs/selfie.py:tiny --workdir=workdirs/selfie_tiny
  python main.py --config=configs/selfie.py:allp_tiny --workdir=workdirs/allp_tiny

  # CIFAR-10 (Table 1), on one accelerator host:
  python main.py --config=configs/selfie.py --workdir=workdirs/selfie_cifar10 \
      --config.data.data_dir=/path/to/tensorflow_datasets

Variants (`--config=configs/selfie.py:VARIANT`):
  (default)   Selfie on CIFAR-10 (tfds cifar10, train split without labels),
              32x32 images cut into 4x4 patches of 8x8 pixels, 4 masked;
              the first three stacks of a pre-activation ResNet-50 (GroupNorm)
              as the patch network; a 3-layer transformer of width 1024;
              100k steps of batch 256, AdamW (weight decay 1e-4), peak lr
              3e-4 after 250 warmup steps, cosine to 0 (4.1).
  allp        Allp on CIFAR-10: every patch, no masks, 4 transformed copies
              of each image (batch 256 views: 64 images), the loss of
              equations 12-13. With exchange layers (3.2's second variant):
              --config.selfie.model.exchange_layers=3.
  tiny        2 CPU cores: ssl_jax_shapes at 32x32, 4x4 patches of 8x8, 4
              masked; stacks of one block each (widths 8, 16, 32 -> 128
              features), a 2-layer transformer of width 64; batch 64.
  allp_tiny   Allp at the tiny size, 2 copies of 32 images per step.
`batch_size` counts copies (the paper's N): Allp's 256 are 64 images x 4.

Expected result. The paper's Table 1 (CIFAR-10, linear classifiers on
"various layers"): Selfie 65%, Allp 58%. `tiny`: see the README's Selfie
section (measured figures only).

Choices where the paper is silent or garbled:
* Patch network: "the first 3 three residual blocks if patches are used";
  Selfie and Allp train only those, so stage_sizes holds three stacks and the
  full image (for probes and fine-tunes) goes through the same three.
  Stem and normalisation: ssl_jax/nn/resnet_v2.py.
* Transformer h: 4.1 gives "three layers of transformers" and "the final
  attention pooling layer has the dimension 1024": 3 layers of width 1024
  (16 heads), dropout 0.1. Its input is a linear embedding of each patch
  representation (1024 wide from the third stack, so the embedding is a
  1024 x 1024 map), plus a learned position embedding per grid cell
  (selfie.model.position='factorized': row + column vectors, Selfie's
  choice for larger grids).
* Equation 9's (v_k, q_i) is a dot product (Selfie's); the candidates are the
  embedded representations of the image's Q masked patches (the same linear
  embedding as h's inputs, so u + E^k and the candidates share a space).
  The softmax is taken once, inside the cross-entropy.
* Masked patches never exchange information: with exchange layers, the
  visible patches exchange among themselves and the masked ones (the
  candidates) are computed alone.
* Linear initialisation: "0 centered, 1e-3 standard variance normal": read
  as PyTorch's normal_(0, 1e-3), a standard deviation of 1e-3
  (model.linear_std), for every linear layer of the ResNet's exchange
  layers, the transformer and the projection; position embeddings and u_0
  start at BERT's 0.02.
* Allp (equations 12-13): S is the rescaled cosine of the 128-d
  projections (as for equation 15), positives are the other copies of the
  same image, negatives every copy of every other image in the batch;
  normalise='balanced' averages the positive and the negative terms each
  (equation 12 sums them, which weighs one positive against 4(N-1)
  negatives); 'printed' averages over all pairs.
* Views: AMDIM's augmentation (ssl_jax.data.ViewSpec.amdim) for every copy;
  Allp's copies draw their own crops.
"""

from __future__ import annotations

import ml_collections

from configs import common

VARIANTS = ('', 'allp', 'tiny', 'allp_tiny')


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The patch network + transformer block shared with configs/dv2.py."""
  m = dict(stage_sizes=(3, 4, 6), resnet_width=64, stem_width=64, norm='group',
           norm_groups=32, dropout=0.1, linear_std=1e-3, exchange_layers=0,
           exchange_width=512, exchange_heads=8, width=1024, num_layers=3, heads=16,
           mlp_ratio=4, position='learned', projection=128)
  m.update(overrides)
  return ml_collections.ConfigDict(m)


TINY_MODEL = dict(stage_sizes=(1, 1, 1), resnet_width=8, stem_width=16, norm_groups=8,
                  exchange_width=32, exchange_heads=4, width=64, num_layers=2, heads=4)


def amdim_augment(**overrides) -> ml_collections.ConfigDict:
  """ssl_jax.data.ViewSpec.amdim's fields, as a config block."""
  a = dict(min_area=0.3, aspect=(0.7, 1.4), flip=True, jitter_prob=0.8, brightness=0.4,
           contrast=0.4, saturation=0.4, hue=0.125, grayscale_prob=0.25)
  a.update(overrides)
  return ml_collections.ConfigDict(a)


def skeleton(objective: str, *, data: str, split: str, image_size: int
             ) -> ml_collections.ConfigDict:
  """What configs/selfie.py and configs/dv2.py share (4.1): 100k steps of
  batch 256 (views), AdamW (weight decay 1e-4) at peak lr 3e-4 after 250
  warmup steps, cosine to 0; the data block (crops come from the method's
  `augment`); sharding, logging, checkpoints."""
  c = ml_collections.ConfigDict()
  c.objective = objective
  c.seed = 0
  c.total_steps = 100_000
  c.batch_size = 256  # the paper's N: views per step
  c.compute_dtype = 'float32'
  c.data = ml_collections.ConfigDict(dict(
      name=data, data_dir=ml_collections.FieldReference(None, field_type=str), split=split,
      image_size=image_size, min_area=0.3, flip=True, skip_bad_images=False))
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adamw', lr=3e-4, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8,
      warmup_steps=250, schedule='cosine', grad_clip_norm=None))
  c.sharding = ml_collections.ConfigDict(dict(
      rule='replicate', fsdp_axis_size=1, fsdp_min_size=2**18))
  c.log_every = 100
  c.checkpoint = ml_collections.ConfigDict(dict(every=5000, keep=3, keep_period=0))
  return c


def tiny_schedule(c: ml_collections.ConfigDict, batch_size: int) -> None:
  """The tiny variants' data, schedule and evaluation (2 CPU cores)."""
  c.data.update(dict(name='ssl_jax_shapes', split='train', image_size=32))
  c.total_steps = 1000
  c.batch_size = batch_size
  c.optimizer.update(dict(lr=1e-3, warmup_steps=50))
  c.log_every = 20
  c.checkpoint.every = 200
  c.eval.update(dict(split='test[:1000]', train_split='train[:2000]', batch_size=200,
                     every=200, crop_fraction=1.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.variant(arg or None, VARIANTS, 'selfie.py')
  tiny = variant.endswith('tiny')
  allp = variant.startswith('allp')
  c = skeleton('selfie', data='cifar10', split='train', image_size=32)
  s = c.selfie = ml_collections.ConfigDict()
  s.objective = 'allp' if allp else 'selfie'
  s.grid = 4            # M = 16 patches
  s.num_masked = 4      # Q
  s.views = 4 if allp else 1
  s.normalise = 'balanced'
  s.augment = amdim_augment()
  s.model = model_config()
  c.online_probe = ml_collections.ConfigDict(dict(representation='patch_view', lr=1e-3))
  c.eval = common.eval_config(
      split='test', train_split='train[:10000]', batch_size=512, every=10_000,
      crop_fraction=1.0, monitors=('fewshot', 'knn'), representation='patch_view')
  if tiny:
    s.model.update(TINY_MODEL)
    tiny_schedule(c, 64)
    if allp:
      s.views = 2  # 32 images x 2 copies
  return c

LINEAR_PROBE_VARIANTS = ('tiny', 'allp_tiny', '', 'allp')
FINETUNE_VARIANTS = ('tiny', 'allp_tiny', 'tiny_scratch', '', 'allp')


def linear_probe_config(variant: str) -> ml_collections.ConfigDict:
  """configs/linear_probe.py:selfie[_tiny|_allp|_allp_tiny]: the shared
  linear probe (configs/linear_probe.py) on representation 'patch_view' (u
  from every patch); Table 1 probes "various layers": --layer_sweep
  chooses among every representation (patch_res2..4, image_res2..4,
  patch_view) on the held-out images. CIFAR-10: the test split is reported."""
  p = get_config(variant or None)
  c = common.linear_probe_config(p, tiny=variant.endswith('tiny'))
  if not variant.endswith('tiny'):
    c.eval.split = 'test'
  return c


def finetune_config(variant: str) -> ml_collections.ConfigDict:
  """configs/finetune.py:selfie[_tiny|...]: the whole network fine-tuned
  with a linear classifier on 'image_res4' (the full image through the
  pretrained stacks, as Selfie fine-tunes its ResNet); DV2 4.1's supervised
  stage: AdamW, lr 1e-4, batch 32, 5k steps, 250 warmup steps, cosine.
  tiny (init.workdir: a tiny pretraining) and tiny_scratch (random
  initialisation) share one short recipe: 1000 steps of batch 32 at lr
  1e-2 on whole images with flips, 10% of the labels, a LeCun-normal
  classifier (a zero one sends a random backbone no gradient at first) on
  the features standardised one by one (tiny_scratch: the raw features)
  (configs/common.py:patch_network_finetune_config says how it was chosen)."""
  scratch = variant == 'tiny_scratch'
  p = get_config('tiny' if scratch else variant or None)
  return common.patch_network_finetune_config(p, variant.endswith('tiny') or scratch,
                                              'image_res4', scratch=scratch)
