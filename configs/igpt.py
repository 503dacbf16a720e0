r"""iGPT pretraining: autoregressive or BERT objectives over a 512-colour palette.

Commands:

  # Laptop / CI: the built-in offline dataset on 2 CPU cores (fits the
  # palette first if it is missing, about 10 s):
  python main.py --config=configs/igpt.py:tiny --workdir=workdirs/igpt_tiny
  python main.py --config=configs/igpt.py:tiny,bert --workdir=workdirs/igpt_tiny_bert

  # iGPT-L on ImageNet at 32x32, on a v3-32 (every host); fit the palette once:
  python -m ssl_jax.palette --config=configs/igpt.py:l \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
  python main.py --config=configs/igpt.py:l --workdir=gs://BUCKET/igpt_l \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Variants (`--config=configs/igpt.py:VARIANT[,bert]`; `,bert` switches the
objective to BERT with 15% of tokens masked):
  s     iGPT-S: 24 layers, 512 wide, 8 heads; ImageNet at 32x32 (context 1024).
  m     iGPT-M: 36 layers, 1024 wide, 8 heads; 32x32; remat, FSDP over 8 devices.
  l     iGPT-L: 48 layers, 1536 wide, 16 heads; 32x32; remat, FSDP over 32
        devices (a v3-32). The default.
  l48   iGPT-L at 48x48 (context 2304; Table 2's 65.2% probe).
  tiny  2 CPU cores: ssl_jax_shapes at 16x16 (context 256), 4 layers, 64
        wide, 2 heads, batch 32, lr 3e-3, 500 steps.

Expected result (tiny; measured in a new virtual environment, 2 CPU cores):
7m48s with the palette's fit (8.7 s); ~0.7 s/step. The AR loss falls from
6.24 (ln 512) to 1.35 nats per token over steps 400-500, next-token accuracy
72%; ,bert: 6.24 -> 1.32 on the masked tokens (mask rate 14.5%, accuracy
76%), 6m39s. Sampling (python -m ssl_jax.sample) takes 14 s and continues
shapes and backgrounds. The representations of this 500-step model are
at chance on ssl_jax_shapes: the layer sweep's logistic regressions reach
10.0-12.4% (chance 10%), the low-data probe about 90% error at 40 to 1000
labels, the short fine-tune 11.3%. Longer pretraining lifts them off
chance, but not clearly past a random network. One run of tiny with
--config.igpt.model.token_init=palette --config.total_steps=3000 (its
cosine schedule stopped at step 2000, lr still 7.7e-4), read by
configs/linear_probe.py:igpt_tiny --layer_sweep --config.init.step=S (layer
and l2 chosen on 1000 held-out images, top-1 on 1000 test images); random
init is the same sweep of the unpretrained network (no init.workdir, the
same palette and token init):

  step                     500    1000   1500   2000   random init
  chosen layer             1      1      1      1      0
  test top-1 (held out)    11.2   18.0   17.2   19.3   17.6
                           (10.7) (17.5) (19.3) (20.5) (17.9)
  middle layer (layer_2)   10.3   16.5   17.7   18.2   12.1

while the AR loss fell from 1.32 to 1.05 nats per token (batch values) and
the middle layer's 25-shot ridge rose from 10.4% to 13.1%. The random
network's best layer is its embedding average, which with 'palette' is a
linear map of the image's mean colour; its middle layers read 11.7-14.0%.
So pretraining puts class information into the middle layers (at step
2000, 5-6 points over the same layers at random init), and its best layer
then leads the random network's best by 1.7 points: within the standard
error of two 1000-image test sets (1.2 points each), not a measured win.
One pretraining run costs about 37 minutes on a CPU core per 2000 steps.
The iGPT paper finds good features only at scale (its Figure 3); use tiny
to check the pipeline, not the method.

Parameters (the paper: S 76M, M 455M, L 1362M): 76.6M, 455.2M and 1362.3M
at context 1024, counting the palette (1536 frozen numbers).

The palette: igpt.palette.path names a .npy file [512, 3] of RGB centroids
in [-1, 1] (the released kmeans_centers.npy loads as is); '' means the
dataset's default file, DATA_DIR/ssl_jax_palettes/NAME_SPLIT_SIZEpx_k512.npy,
which `python -m ssl_jax.palette --config=...` writes, and which a run fits
itself when igpt.palette.fit_if_missing (tiny only: a pod run should not fit
one silently). k-means: k-means++ seeds, then Lloyd iterations, on
fit_pixels pixels drawn from fit_images images at the model's resolution.
Checkpoints carry the palette (a frozen parameter).

Choices where the summary is silent (from the released model and the full
paper where they say; otherwise ours):
* The network follows the released model (ssl_jax/methods/igpt/model.py): RMS-style
  norms with a gain, no biases, sigmoid GELU, untied zero-initialised output
  embedding, a start-of-sequence vector, learned position embeddings.
* Token embeddings (igpt.model.token_init): 'normal' is the released
  model's N(0, 0.02) table, where every colour starts unrelated to every
  other; 'palette' (ours) starts each colour's embedding at its RGB through
  one random linear map, rescaled to std 0.02, so that close colours start
  close. Pretraining keeps 'normal'. The from-scratch fine-tune
  (configs/finetune.py:igpt_tiny_scratch) uses 'palette': at 16x16 a
  bidirectional tiny network without masks trained on the labels alone
  (a standalone script: batch 32, 400 steps, Adam, a LeCun-normal
  classifier, flips only; one run each, 1000 test images) reached
  28.5% with 'palette' and 13.7% with 'normal' (the latter with its
  position embeddings started at a 2-D sine-cosine grid, which added
  nothing on top of 'palette': 28.6%; so that is not an option). It does
  not lift tiny's 500-step features off chance: with 'palette' the layer
  sweep of 500 AR steps reads 10.1-11.5% on test (11.5% chosen), and of
  500 BERT steps 10.1-12.8% (12.8% chosen, 10.7% held out); longer runs:
  see the expected result above.
* Optimiser: Adam, betas (0.9, 0.95), no weight decay, no dropout, no
  gradient clipping; warmup one epoch, then cosine decay to 0; batch 128 for
  1M steps. The paper picks each model's learning rate from a grid (0.01,
  0.003, 0.001, ...) without reporting the pick: we use 0.003 for S and
  0.001 for M and L.
* Augmentation for pretraining: Inception random resized crop (area 0.25-1)
  and horizontal flips, then the resize to 32x32 (or 48x48). The summary
  lists "random crops, resizing, reflection padding and flips, depending on
  the dataset": data.crop='pad' gives the reflection-padding crop (used by
  the CIFAR fine-tunes, configs/finetune.py).
* BERT: masked tokens' embeddings are zeroed (the released model has no mask
  token); the loss is averaged per example over its masked tokens.
  Evaluation ensembles over masks (Figure 4): igpt.bert_eval_masks=5
  masks (the count is not in the text implemented here), each drawn afresh
  for every evaluation batch; classifiers average their predicted
  probabilities over the masks, feature probes read the features averaged
  over them. 0 evaluates unmasked inputs. Fine-tunes train under one fresh
  mask per step (the one the generative loss draws), with or without that
  loss.
* Reading order: raster by default; igpt.order='random' reads the positions
  in one fixed random permutation (seeded by igpt.order_seed), the same for
  every image: the density of the paper's formula under another pi.
* Representation: the average over positions of a layer's normed output
  (layer_0 = embeddings .. layer_L = the final norm). The paper finds the
  best linear probes in the middle of the network: the online probe and the
  monitors read the middle layer.
* tiny at 16x16: 32x32 means 1024 tokens, and attention over 1024 positions
  does not fit a 2-core CPU's budget; the palette still has 512 colours.

Attention kernel: the training pass's attention (igpt.model.attention;
sampling keeps the reference) is 'xla', the reference, by default; 'cudnn'
(NVIDIA GPUs, bfloat16) and 'splash' (TPU) compute the same function with the
platform's fused kernel (ssl_jax/nn/attention.py). Not a hyper-parameter of
the paper: a run may resume under another kernel.
"""

from __future__ import annotations

import math

import ml_collections

from configs import common

VARIANTS = ('l', 's', 'm', 'l48', 'tiny')
MODIFIERS = ('bert',)
IMAGENET_TRAIN = 1_281_167

SIZES = {'s': dict(width=512, num_layers=24, heads=8),
         'm': dict(width=1024, num_layers=36, heads=8),
         'l': dict(width=1536, num_layers=48, heads=16)}


def parse(arg: str | None) -> tuple[str, tuple[str, ...]]:
  """'VARIANT[,MODIFIER...]' -> (variant, modifiers)."""
  parts = [p for p in (arg or '').split(',') if p]
  base = common.variant(parts[0] if parts and parts[0] not in MODIFIERS else None,
                        VARIANTS, 'igpt.py')
  mods = tuple(p for p in parts if p != base)
  bad = [m for m in mods if m not in MODIFIERS]
  if bad:
    raise ValueError(f'unknown modifier {bad[0]!r} of configs/igpt.py; allowed: '
                     + ', '.join(repr(m) for m in MODIFIERS))
  return base, mods


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, modifiers = parse(arg)
  c = ml_collections.ConfigDict()
  c.objective = 'igpt'
  c.seed = 0
  c.total_steps = 1_000_000
  c.batch_size = 128
  c.compute_dtype = 'float32'  # or 'bfloat16' (parameters stay float32)

  c.data = ml_collections.ConfigDict()
  c.data.name = 'imagenet2012'
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.split = 'train'
  c.data.image_size = 32
  c.data.min_area = 0.25
  c.data.flip = True
  c.data.skip_bad_images = False  # True: skip (and log) unreadable image files
  c.data.crop = 'resized'  # or 'pad': reflection padding + random crop
  c.data.pad = 4

  g = c.igpt = ml_collections.ConfigDict()
  g.objective = 'bert' if 'bert' in modifiers else 'ar'
  g.order = 'raster'  # or 'random' (one fixed permutation, seeded by order_seed)
  g.order_seed = 0
  g.vocab_size = 512
  g.bert_mask_rate = 0.15
  g.bert_eval_masks = 5  # masks ensembled when evaluating a BERT model (0: none)
  g.palette = ml_collections.ConfigDict(dict(
      path='', fit_if_missing=False, fit_images=10_000, fit_pixels=1_000_000,
      fit_iterations=30, fit_seed=0))
  g.model = ml_collections.ConfigDict(dict(context=1024, mlp_ratio=4, remat=False,
                                           attention='xla', token_init='normal',
                                           **SIZES['l']))

  c.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-3, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8,
      warmup_steps=math.ceil(IMAGENET_TRAIN / 128), schedule='cosine', grad_clip_norm=None))
  c.sharding = ml_collections.ConfigDict(dict(
      rule='replicate', fsdp_axis_size=1, fsdp_min_size=2**18))
  c.online_probe = ml_collections.ConfigDict(dict(representation='', lr=1e-3))
  c.eval = common.eval_config(
      split='validation[:10000]', train_split='train[:50000]', batch_size=512,
      every=50_000, crop_fraction=1.0, monitors=('fewshot', 'knn'), representation='')
  c.log_every = 100
  c.checkpoint = ml_collections.ConfigDict(dict(every=5000, keep=3, keep_period=0))

  if variant in SIZES or variant == 'l48':
    g.model.update(SIZES['l' if variant == 'l48' else variant])
    c.optimizer.lr = 3e-3 if variant == 's' else 1e-3
    if variant in ('m', 'l', 'l48'):
      g.model.remat = True
      c.sharding.update(dict(rule='fsdp', fsdp_axis_size=8 if variant == 'm' else 32))
    if variant == 'l48':
      c.data.image_size = 48
      g.model.context = 48 * 48
  elif variant == 'tiny':
    c.data.name = 'ssl_jax_shapes'
    c.data.image_size = 16
    c.data.min_area = 0.35
    g.model.update(dict(width=64, num_layers=4, heads=2, context=256))
    g.palette.update(dict(fit_if_missing=True, fit_images=2000, fit_pixels=200_000,
                          fit_iterations=20))
    c.total_steps = 500
    c.batch_size = 32
    c.optimizer.update(dict(lr=3e-3, warmup_steps=30))
    c.log_every = 20
    c.checkpoint.every = 250
    c.eval.update(dict(split='test[:1000]', train_split='train[:2000]', batch_size=200,
                       every=250))
  middle = f'layer_{g.model.num_layers // 2}'
  c.online_probe.representation = middle
  c.eval.representation = middle
  return c


LINEAR_PROBE_VARIANTS = ('tiny', 'l', 'l_cifar10', 'l_cifar100')
FINETUNE_VARIANTS = ('tiny', 'tiny_scratch', 'l_cifar10', 'l_cifar100')


def linear_probe_config(variant: str) -> ml_collections.ConfigDict:
  """configs/linear_probe.py:igpt_{tiny,l,l_cifar10,l_cifar100}: the middle
  layer's normed output averaged over positions; the _cifar variants probe
  ImageNet features on CIFAR (Tables 1, 4)."""
  tiny = variant == 'tiny'
  c = common.linear_probe_config(get_config('tiny' if tiny else 'l'), tiny=tiny)
  c.data.crop = 'resized'
  if tiny:
    c.feature_probe.update(dict(train_examples=5000, shots=(4, 25, 100)))
  elif variant != 'l':
    name = variant.split('_')[-1]
    c.data.update(dict(name=name, split='train', min_area=1.0,
                       held_out_examples=common.held_out_default(name)))
    c.eval.update(dict(split='test', crop_fraction=1.0))
    c.total_steps = 20_000
    c.batch_size = 256
  return c


def finetune_config(variant: str) -> ml_collections.ConfigDict:
  """configs/finetune.py:igpt_{tiny,l_cifar10,l_cifar100}: iGPT fine-tuning
  (Step 3): the final norm's output averaged over positions, a linear
  classifier, and the generative loss kept: L = L_CLF + L_GEN, every
  parameter trained.

  igpt_tiny_scratch: the tiny backbone from random initialisation (the
  supervised-from-scratch row), on the labels alone (generative_weight 0),
  with colour-aware token embeddings (igpt.model.token_init='palette', see
  the module docstring), the dataset's default palette (fitted first if
  missing), 1000 steps of batch 32, lr 1e-3 with 50 warmup steps and cosine
  decay, the tiny fine-tune's crops and flips, and a LeCun-normal classifier
  (classifier.head_init='normal': the zero-initialised head sends the
  backbone no gradient until it has learned from random features that
  barely differ between images). Measured over seeds 0, 1, 2 (1000 test
  images): 30.4 +- 3.0% test top-1 (31.4, 32.7, 27.0; held out 29.4 +-
  0.9), 11 min per run on one CPU core with another run on the other;
  with the zero head 19.5% (one run); with the generative loss kept
  (weight 1) classification was still at chance after 300 steps."""
  scratch = variant == 'tiny_scratch'
  tiny = variant in ('tiny', 'tiny_scratch')
  p = get_config('tiny' if tiny else 'l')
  c = common.classification_config(p, mode='finetune')
  c.classifier.update(dict(representation=f'layer_{p.igpt.model.num_layers}', head='linear',
                           generative_weight=1.0))
  c.data.update(dict(crop='pad', flip=True))
  c.optimizer.update(dict(schedule='constant', warmup_steps=0))
  c.sweep.lr = (1e-5, 3e-5, 1e-4, 3e-4)
  if tiny:
    c.data.pad = 2
    c.total_steps = 300
    c.batch_size = 32
    c.optimizer.lr = 3e-4
    c.log_every = 20
    c.checkpoint.every = 150
    c.sweep.batch_size = (32,)
    if scratch:  # supervised from scratch: the tiny probes' ceiling
      # The dataset's default palette (the one configs/igpt.py:tiny fits).
      # (name and data_dir follow --config.data.*; the palette of split 'train').
      c.backbone.data.update(dict(name=c.data.get_ref('name'),
                                  data_dir=p.data.get_ref('data_dir'), split=p.data.split))
      c.backbone.igpt.model.token_init = 'palette'
      c.classifier.update(dict(generative_weight=0.0, head_init='normal'))  # labels only
      c.total_steps = 1000
      c.optimizer.update(dict(lr=1e-3, schedule='cosine', warmup_steps=50))
      c.log_every = 50
      c.checkpoint.every = 500
    return c
  name = variant.split('_')[-1]
  c.data.update(dict(name=name, split='train', pad=4,
                     held_out_examples=common.held_out_default(name)))
  # Early stopping on validation accuracy (the paper): every 2000 steps the
  # 5000 held-out training images are scored, and the test split is read
  # once, for the best of them.
  c.eval.update(dict(split='test', every=2000, crop_fraction=1.0, select='best'))
  c.batch_size = 128  # the pretraining's batch
  c.sweep.batch_size = (128,)
  c.total_steps = 50_000
  c.optimizer.lr = 3e-5
  return c
