r"""The multi-task ViT ("Pretraining Vision Transformer via Multi-Task
Self-Supervision", ../shared/papers/003): one ViT trained at once on a
contrastive token, rotation, colorization, inpainting, relative position
and jigsaw.

  python main.py --config=configs/multitask_vit.py:tiny --workdir=workdirs/mtvit_tiny
  python main.py --config=configs/multitask_vit.py:cifar10 --workdir=gs://BUCKET/mtvit_c10 \
      --config.data.data_dir=gs://BUCKET/tfds
  python main.py --config=configs/multitask_vit.py --workdir=gs://BUCKET/mtvit_b16 \
      --config.data.data_dir=gs://BUCKET/tfds    # ImageNet, a v3-32

Variants:
  ''       ImageNet ViT-B/16 at 224 on a v3-32: 300 epochs of batch 1024 (two
           views each), AdamW (weight decay 0.05) at 5e-4 x batch / 512,
           cosine after 5 warmup epochs, drop path 0.1.
  cifar10  ViT-S/4 on CIFAR-10 at 32x32 (an 8x8 grid), batch 512, 300 epochs.
  tiny     2 CPU cores: ssl_jax_shapes/upright at 32x32, 4x4 patches (8x8
           grid), a 4-block ViT of width 64, batch 64 images x 2 views, 1000
           steps: 5 min 42 s alone, every task's loss falling (jigsaw's
           barely); layer sweep 34.2% test top-1 on rotation_token against
           24.5% at random initialisation (one run; over seeds:
           benchmarks/multitask_vit.py).

Every task and weighting is an override: multitask_vit.tasks (a comma-
separated subset of contrastive, rotation, colorization, inpainting,
relative_position, jigsaw; a task left out builds no head and draws
nothing), multitask_vit.weighting ('uncertainty' or 'fixed', with
multitask_vit.<task>.weight), multitask_vit.passes ('one': every task from
one forward pass per view; 'separate': one pass per task, each view
carrying only that task's transformation: the report's k x N
alternative), multitask_vit.relative_position.shortcut ('literal' or
'withheld'). E.g. SiT's set:
  --config.multitask_vit.tasks=contrastive,rotation,inpainting

Choices (the report gives the idea and no number; where each default comes
from):
* Backbone: ViT (Dosovitskiy et al.) with [CLS] and SiT's two task tokens
  ([CT] for the contrastive head, one for rotation) before the patches;
  learned position embeddings; prefix tokens carry none. Sizes Ti/S/B.
  Drop path 0.1 (SiT, DeiT; 0 in tiny, a 4-block, 1000-step run); no
  dropout.
* Views: two per image (SiT), SimCLR's augmentation at half colour
  strength (SiT's colour jitter 0.4 is 0.5 x SimCLR's 0.8) without the
  grayscale op: colorization reads its targets from the view, and a
  grayscale view has no colour to predict. Blur as SimCLR (p=0.5).
* Contrastive: NT-Xent, temperature 0.5 (SiT's), over every view of the
  global batch; MLP head to 128 (SimCLR's projection size).
* Rotation: a quarter turn per view, uniform (RotNet's four classes);
  linear head on the rotation token.
* Colorization (Zhang et al., cited by the report): ab of CIE Lab quantised
  on a grid of 10 (`bin_size`; the in-gamut cells: 261 here, computed from
  the sRGB cube; Zhang et al. count 313), soft targets on the 5 nearest
  bins (sigma 5), cross-entropy; predicted at a quarter of the patch's
  resolution, as Zhang et al. predict at 1/4 of the image's (`resolution`
  cells per side: 4 at patch 16, 1 at patch 4, where the target is the
  distribution of the patch's ab pooled to one cell). No class
  rebalancing (it needs the dataset's colour statistics). target='mean':
  the patch's mean ab / 100, squared error (the report's "or mean color").
  Grayscale is dm-pix's luma in all three channels.
* Inpainting: masked patches' tokens replaced by a learned mask token
  (position embedding kept); MSE on per-patch normalised pixels (MAE's).
* Relative position: anchor uniform over the grid, neighbour uniform over
  its in-grid neighbours (8 classes, Doersch et al.); the pair's patches
  jittered by up to 1 pixel and colour-jittered slightly (brightness /
  contrast / saturation 0.1, hue 0.02), as the report suggests; the
  jitter reads the view as the model sees it (grayscale, moved and grey
  masked cells), so a strip of a neighbour shows nothing another task
  hides. Pairs are drawn independently (two may share a cell), and the
  two patches of a pair abut with no gap (Doersch et al. leave one; a
  4-pixel patch has no room), so their shared edge is a low-level cue the
  'withheld' rows do not remove.
  'literal': the pair keeps its position embeddings, from which the offset
  can be read directly (the shortcut the report notes); 'withheld': both
  get one learned "no position" embedding instead. What 'withheld' leaves:
  the two cells with no positioned token are known by elimination, so the
  model still knows the pair's cells up to their order and must read from
  content which of the two is the anchor.
* Jigsaw: the chosen patches' contents moved along one random cycle (every
  one moves, so no answer is "stay"); an N-way head on each moved patch's
  token predicts the cell its content came from.
* Labels of relative position and jigsaw, and every cell index, refer to
  the grid of the view the model sees, after its rotation.
* Counts: about 10% of the cells per patch task and a few pairs: ImageNet
  (196 cells) 20 colorization, 20 inpainting, 20 jigsaw, 8 pairs; CIFAR-10
  and tiny (64 cells) 6, 6, 6 and 4. The sets are disjoint and the pairs'
  cells belong to no set, so no task's corruption reaches another's
  target or input (tests/test_multitask_vit.py).
* Weighting: SiT's learned uncertainty weighting (its LearnedLoss: c
  exp(-s) L + s / 2, c = 1/2 for regressions) by default; 'fixed' uses
  <task>.weight (all 1).
* Diagnostics: every `diagnostics_every` steps, each task's gradient on
  the backbone alone (one extra forward pass and one backward pass per
  task on those steps, in sequence; the T gradients are held at once: 2 GB
  for ViT-B's 86M parameters and 6 tasks), of the task's unweighted loss:
  logged as <task>/backbone_grad_norm and grad_cosine/<a>-<b>.
* Heads: MLPs of width `head_width` (2048 at ImageNet size, SimCLR's
  projection width; 1024 for ViT-S; 128 in tiny); the jigsaw head chooses
  among all N cells.
* Weight decay as the optimizer applies it to every method: on every
  matrix, the position embeddings included (DeiT and timm exempt them; the
  prefix and mask tokens, vectors, are exempt here too).
* Online probe: it reads the training pass's first view, as the other
  methods' do: with passes='one' that view is turned and corrupted; with
  'separate' the first pass is the contrastive one (whole views).
* Evaluation: representations cls, contrastive_token, rotation_token,
  tokens (patch tokens averaged) and layer_k; the online probe and the
  monitors read contrastive_token (`--layer_sweep` chooses on held-out
  images).

Attention kernel: the ViT's attention (multitask_vit.model.attention; the
fused kernels need model.dropout=0) is 'xla', the reference, by default;
'cudnn' (NVIDIA GPUs, bfloat16) and 'splash' (TPU) compute the same function
with the platform's fused kernel (ssl_jax/nn/attention.py). Not a hyper-
parameter of the paper: a run may resume under another kernel.
"""

from __future__ import annotations

import math

import ml_collections

from configs import common

VARIANTS = ('', 'cifar10', 'tiny')
EXAMPLES = {'imagenet2012': 1_281_167, 'cifar10': 50_000}
SIZES = {'T': (192, 3), 'S': (384, 6), 'B': (768, 12)}  # width, heads; 12 blocks


def _schedule(c: ml_collections.ConfigDict, *, examples: int, batch: int, epochs: int,
              warmup_epochs: int) -> None:
  common.epoch_schedule(c, examples=examples, batch=batch, base_lr=5e-4, epochs=epochs,
                        warmup_epochs=warmup_epochs, base_batch=512)  # SiT's (DeiT's) scaling


def _counts(m: ml_collections.ConfigDict, sets: int, pairs: int) -> None:
  m.colorization.patches = m.inpainting.patches = m.jigsaw.patches = sets
  m.relative_position.pairs = pairs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.variant(arg or None, VARIANTS, 'multitask_vit.py')
  c = ml_collections.ConfigDict()
  c.objective = 'multitask_vit'
  c.seed = 0
  c.compute_dtype = 'float32'
  c.data = ml_collections.ConfigDict(dict(
      name='imagenet2012', data_dir=ml_collections.FieldReference(None, field_type=str),
      split='train', image_size=224, min_area=0.08, flip=True, skip_bad_images=False))
  m = c.multitask_vit = ml_collections.ConfigDict()
  m.tasks = 'contrastive,rotation,colorization,inpainting,relative_position,jigsaw'
  m.passes = 'one'
  m.weighting = 'uncertainty'
  m.patch_size = 16
  m.contrastive = ml_collections.ConfigDict(dict(weight=1.0, temperature=0.5, dim=128))
  m.rotation = ml_collections.ConfigDict(dict(weight=1.0))
  m.colorization = ml_collections.ConfigDict(dict(
      weight=1.0, patches=20, target='pixels', resolution=4, bin_size=10.0))
  m.inpainting = ml_collections.ConfigDict(dict(weight=1.0, patches=20))
  m.relative_position = ml_collections.ConfigDict(dict(
      weight=1.0, pairs=8, shortcut='literal',
      augment=ml_collections.ConfigDict(dict(jitter=1, brightness=0.1, contrast=0.1,
                                             saturation=0.1, hue=0.02))))
  m.jigsaw = ml_collections.ConfigDict(dict(weight=1.0, patches=20))
  m.diagnostics_every = 500
  m.augment = ml_collections.ConfigDict(dict(
      min_area=0.08, aspect=(3 / 4, 4 / 3), flip=True, jitter_prob=0.8, brightness=0.4,
      contrast=0.4, saturation=0.4, hue=0.1, grayscale_prob=0.0, blur_prob=0.5,
      blur_sigma=(0.1, 2.0)))
  width, heads = SIZES['B']
  m.model = ml_collections.ConfigDict(dict(
      width=width, depth=12, heads=heads, mlp_ratio=4, head_width=2048, dropout=0.0,
      drop_path=0.1, remat=False, attention='xla'))

  c.optimizer = ml_collections.ConfigDict(dict(
      name='adamw', lr=1.0, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, warmup_steps=0,
      schedule='cosine', grad_clip_norm=None))
  _schedule(c, examples=EXAMPLES['imagenet2012'], batch=1024, epochs=300, warmup_epochs=5)
  c.sharding = ml_collections.ConfigDict(dict(
      rule='replicate', fsdp_axis_size=1, fsdp_min_size=2**18))
  c.online_probe = ml_collections.ConfigDict(dict(representation='contrastive_token', lr=1e-3))
  c.eval = common.eval_config(
      split='validation[:10000]', train_split='train[:100000]', batch_size=1024,
      every=10_000, crop_fraction=0.875, monitors=('fewshot', 'knn'),
      representation='contrastive_token')
  c.log_every = 100
  c.checkpoint = ml_collections.ConfigDict(dict(every=2000, keep=3, keep_period=0))

  if variant == 'cifar10':
    c.data.update(dict(name='cifar10', image_size=32, min_area=0.2))
    m.patch_size = 4
    m.colorization.resolution = 1
    _counts(m, sets=6, pairs=4)
    width, heads = SIZES['S']
    m.model.update(dict(width=width, heads=heads, head_width=1024))
    m.augment.update(dict(min_area=0.2, blur_prob=0.0))  # SimCLR's CIFAR recipe: no blur
    _schedule(c, examples=EXAMPLES['cifar10'], batch=512, epochs=300, warmup_epochs=10)
    c.eval.update(dict(split='test', train_split='train[:10000]', every=5000,
                       crop_fraction=1.0, batch_size=512))
    c.checkpoint.every = 2000
  elif variant == 'tiny':
    c.data.update(dict(name='ssl_jax_shapes/upright', image_size=32, min_area=0.35))
    m.patch_size = 4
    m.colorization.resolution = 1
    _counts(m, sets=6, pairs=4)
    m.model.update(dict(width=64, depth=4, heads=4, head_width=128, drop_path=0.0))
    m.augment.update(dict(min_area=0.35, blur_prob=0.0))
    m.diagnostics_every = 100
    c.total_steps = 1000
    c.batch_size = 64
    c.optimizer.update(dict(lr=1e-3, warmup_steps=50))
    c.log_every = 20
    c.checkpoint.every = 200
    c.eval.update(dict(split='test[:1000]', train_split='train[:2000]', batch_size=200,
                       every=200, crop_fraction=1.0))
  return c


LINEAR_PROBE_VARIANTS = ('tiny', 'cifar10', '')
FINETUNE_VARIANTS = ('tiny', 'tiny_scratch', 'cifar10', '')


def linear_probe_config(variant: str) -> ml_collections.ConfigDict:
  """configs/linear_probe.py:multitask_vit[_tiny|_cifar10]: the shared linear
  probe (configs/linear_probe.py) on 'contrastive_token'; --layer_sweep
  chooses among every representation on the held-out images."""
  p = get_config(variant or None)
  c = common.linear_probe_config(p, tiny=variant == 'tiny')
  c.classifier.representation = 'contrastive_token'
  if variant == 'cifar10':
    c.eval.split = 'test'
  return c


def finetune_config(variant: str) -> ml_collections.ConfigDict:
  """configs/finetune.py:multitask_vit[_tiny|_tiny_scratch|_cifar10]: the
  whole ViT fine-tuned with a linear classifier on 'cls' (ViT's), DeiT's
  recipe as SiT fine-tunes: AdamW (weight decay 0.05), lr 5e-4 x batch /
  512, cosine after 5 warmup epochs, 100 epochs, drop path 0.1, label
  smoothing 0.1, layer-wise decay 0.65 (BEiT / MAE's for ViT-B). tiny and
  tiny_scratch: 1000 steps of batch 64 at lr 1e-3 on whole images with
  flips and none of the 100-epoch regularisers, a LeCun-normal classifier
  (a zero one sends a random backbone no gradient at first), as the other
  methods' tiny fine-tunes."""
  scratch = variant == 'tiny_scratch'
  p = get_config('tiny' if scratch else variant or None)
  c = common.classification_config(p, mode='finetune')
  c.classifier.update(dict(representation='cls', head='linear', dropout=0.0,
                           label_smoothing=0.1, layer_decay=0.65))
  c.optimizer.update(dict(weight_decay=0.05, grad_clip_norm=None))
  if variant in ('tiny', 'tiny_scratch'):
    c.backbone.multitask_vit.model.drop_path = 0.0
    c.classifier.update(dict(label_smoothing=0.0, layer_decay=1.0, head_init='normal'))
    c.data.update(dict(min_area=1.0))
    c.total_steps = 1000
    c.batch_size = 64
    c.optimizer.update(dict(lr=1e-3, warmup_steps=25))
    c.log_every = 50
    c.checkpoint.every = 500
    return c
  examples = EXAMPLES[p.data.name] - c.data.held_out_examples
  batch = 1024 if p.data.name == 'imagenet2012' else 512
  c.batch_size = batch
  c.total_steps = math.ceil(100 * examples / batch)
  c.optimizer.update(dict(lr=5e-4 * batch / 512, warmup_steps=math.ceil(5 * examples / batch)))
  if variant == 'cifar10':
    c.eval.split = 'test'
  c.eval.every = 5000
  return c
