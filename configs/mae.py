r"""MAE pretraining (He et al., "Masked Autoencoders Are Scalable Vision
Learners", 2021): the reference baseline most users would otherwise pick.

  python main.py --config=configs/mae.py:tiny --workdir=workdirs/mae_tiny
  python main.py --config=configs/mae.py --workdir=gs://BUCKET/mae_b16 \
      --config.data.data_dir=gs://BUCKET/tfds    # ImageNet ViT-B/16, a v3-32

Variants:
  ''    ImageNet-1K, ViT-B/16 at 224 (14x14 patches), 75% of them masked, a
        decoder of 8 blocks 512 wide (16 heads), normalised-pixel MSE; batch
        4096, AdamW (0.9, 0.95), weight decay 0.05, lr 1.5e-4 x batch / 256
        with 40 warmup epochs then cosine, 1600 epochs, random resized crops
        (area 0.2-1) and flips: the paper's and its official code's
        (PRETRAIN.md, models_mae.py). On a v3-32 each core holds 128
        images, of which the encoder sees 49 patches each; remat
        (mae.model.remat=True) trades compute for memory if it does not
        fit. The paper's ablations run 800 epochs:
        --config.total_steps=250228 --config.optimizer.warmup_steps=12512.
  tiny  2 CPU cores: ssl_jax_shapes at 32x32, 4x4 patches (an 8x8 grid, 16
        visible), an encoder of 4 blocks 64 wide (4 heads) and a decoder of
        2 blocks 64 wide, batch 64, 1000 steps: the encoder of
        configs/randsac.py:tiny and the same data, batch and steps, so the two
        pixel-prediction methods differ in what they predict from what.

Expected result. The paper's ViT-B (1600 epochs, normalised pixels):
fine-tune 83.6% top-1 (FINETUNE.md: four seeds, 83.57 +- 0.08), linear
probe 68.0% on the [CLS] token. tiny: see the README's MAE section (measured
there, with the command).

Choices where the paper is silent, or this house differs:
* Masking: int(N (1 - 0.75)) patches stay visible (MAE's random_masking
  rounds the same way: 49 of 196, 16 of 64), chosen per example on the
  device by the step's key; the cells are kept in row-major order (MAE's
  shuffle order does not matter to a transformer that reads positions
  from its embeddings).
* Initialisation (models_mae.py): Xavier-uniform for every Dense kernel,
  the patch embedding included; normal(0.02) [CLS] and mask tokens; biases
  0; LayerNorm 1 / 0 (eps 1e-6, flax's default and MAE's). Two departures:
  flax initialises the query, key and value projections as three d x d
  matrices (Xavier bound sqrt(6 / 2d)), where timm's fused qkv layer is
  one d x 3d matrix (bound sqrt(6 / 4d)); the patch embedding's bias
  starts at 0 (MAE's convolution keeps PyTorch's uniform default).
* Positions: fixed 2D sine-cosine encodings in the encoder and the decoder
  (ssl_jax.nn.posembed; MAE's get_2d_sincos_pos_embed with its two halves
  swapped: here the first half encodes the row, in MAE the column, a fixed
  channel permutation that matters only when porting MAE's weights); the
  [CLS] token gets none (MAE gives it a zero one). They stay fixed in the
  fine-tune too (MAE's fine-tune makes them a trainable parameter
  initialised to the same values).
* Weight decay as the optimizer applies it to every method: matrices
  only. MAE's pretraining exempts biases and norms too, but decays its
  [CLS] and mask tokens (stored as [1, 1, D] arrays); here they are vectors
  and exempt.
* Pixels: the network reads [-1, 1], as every method here; MAE
  standardises each channel with ImageNet's mean and std first. With
  norm_pix_loss each target patch is standardised on its own, so the two
  differ only in per-channel offsets within a patch (a flat patch's target
  is ~0 here, a fixed colour pattern in MAE's). The target's variance is
  the biased one (MAE's torch.var is unbiased: a factor sqrt(d / (d - 1))
  on the target, 1.0007 at p = 16, 1.01 at p = 4), shared with RandSAC's
  normalised pixels.
* Augmentation: random resized crop (area 0.2-1) and flip only, as MAE; no
  colour jitter. Resizing is the pipeline's antialiased bilinear (MAE's
  is bicubic). tiny crops from 35% of the area, as randsac:tiny (a 32x32
  shape image cropped to 20% often loses the shape).
* GELU is flax's tanh approximation, as every transformer here (timm's is
  the exact erf).
* tiny: lr 1e-3 (the paper's 1.5e-4 x 64 / 256 = 3.75e-5 is for 1600
  epochs, not 1000 steps) with 50 warmup steps, as randsac:tiny; betas
  (0.9, 0.95) as MAE's; the decoder as deep as randsac:tiny's (2 blocks)
  and as wide as the encoder (MAE's is 2/3 of ViT-B's width; at 64 wide a
  narrower decoder would be a 2-head toy).
* Online probe and monitors read 'cls' (MAE's linear probe reads the
  [CLS] token); `--layer_sweep` chooses among 'cls', 'tokens' and every
  layer_k on the held-out images.
* No CIFAR variant: the paper has no CIFAR recipe, and an invented one
  would not be MAE's.

Attention kernel: the model's attention (mae.model.attention) is 'xla', the
reference, by default; 'cudnn' (NVIDIA GPUs, bfloat16) and 'splash' (TPU)
compute the same function with the platform's fused kernel
(ssl_jax/nn/attention.py). Not a hyper-parameter of the paper: a run may
resume under another kernel.
"""

from __future__ import annotations

import ml_collections

from configs import common

VARIANTS = ('', 'tiny')
EXAMPLES = {'imagenet2012': 1_281_167}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.variant(arg or None, VARIANTS, 'mae.py')
  c = ml_collections.ConfigDict()
  c.objective = 'mae'
  c.seed = 0
  c.compute_dtype = 'float32'  # or 'bfloat16' (parameters stay float32)
  c.data = ml_collections.ConfigDict(dict(
      name='imagenet2012', data_dir=ml_collections.FieldReference(None, field_type=str),
      split='train', image_size=224, min_area=0.2, flip=True, skip_bad_images=False))
  m = c.mae = ml_collections.ConfigDict()
  m.patch_size = 16
  m.mask_ratio = 0.75
  m.norm_pix_loss = True
  m.model = ml_collections.ConfigDict(dict(
      width=768, depth=12, heads=12, mlp_ratio=4, decoder_width=512, decoder_depth=8,
      decoder_heads=16, drop_path=0.0, remat=False, attention='xla'))
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adamw', lr=1.0, weight_decay=0.05, b1=0.9, b2=0.95, eps=1e-8, warmup_steps=0,
      schedule='cosine', grad_clip_norm=None))
  common.epoch_schedule(c, examples=EXAMPLES['imagenet2012'], batch=4096, base_lr=1.5e-4,
                        epochs=1600, warmup_epochs=40)
  c.sharding = ml_collections.ConfigDict(dict(
      rule='replicate', fsdp_axis_size=1, fsdp_min_size=2**18))
  c.online_probe = ml_collections.ConfigDict(dict(representation='cls', lr=1e-3))
  c.eval = common.eval_config(
      split='validation[:10000]', train_split='train[:100000]', batch_size=1024,
      every=10_000, crop_fraction=0.875, monitors=('fewshot', 'knn'), representation='cls')
  c.log_every = 100
  c.checkpoint = ml_collections.ConfigDict(dict(every=2000, keep=3, keep_period=0))

  if variant == 'tiny':
    c.data.update(dict(name='ssl_jax_shapes', image_size=32, min_area=0.35))
    m.patch_size = 4
    m.model.update(dict(width=64, depth=4, heads=4, decoder_width=64, decoder_depth=2,
                        decoder_heads=4))
    c.total_steps = 1000
    c.batch_size = 64
    c.optimizer.update(dict(lr=1e-3, warmup_steps=50))
    c.log_every = 20
    c.checkpoint.every = 200
    c.eval.update(dict(split='test[:1000]', train_split='train[:2000]', batch_size=200,
                       every=200, crop_fraction=1.0))
  return c


LINEAR_PROBE_VARIANTS = ('tiny', '')
FINETUNE_VARIANTS = ('tiny', 'tiny_scratch', '')


def linear_probe_config(variant: str) -> ml_collections.ConfigDict:
  """configs/linear_probe.py:mae[_tiny]: the [CLS] token's output. The
  ImageNet variant is MAE's probe (configs/common.py mae_linear_probe:
  LARS, base lr 0.1, batch 16384, 90 epochs, a BatchNorm without affine
  parameters before the classifier), with the house's zero-initialised
  head where MAE's starts at normal(0.01): LARS scales each step by the
  weight's norm, so a zero head grows from a smaller norm in its first
  epochs. tiny is the shared AdamW probe on whitened features
  (configs/linear_probe.py)."""
  p = get_config(variant or None)
  c = common.linear_probe_config(p, tiny=variant == 'tiny')
  c.classifier.representation = 'cls'
  if variant != 'tiny':
    common.mae_linear_probe(c, EXAMPLES[p.data.name] - c.data.held_out_examples)
  return c


def finetune_config(variant: str) -> ml_collections.ConfigDict:
  """configs/finetune.py:mae[_tiny|_tiny_scratch]: MAE's fine-tune
  (FINETUNE.md, ViT-B): the patch tokens averaged ('tokens') into a linear
  classifier (MAE's global pool averages the last block's output and
  normalises the average with a new LayerNorm, fc_norm; 'tokens' averages
  the tokens after the pretrained final norm); AdamW (0.9, 0.999), weight decay 0.05,
  lr 5e-4 x batch / 256 at batch 1024, 5 warmup epochs then cosine, 100
  epochs, layer-wise decay 0.65, drop path 0.1, label smoothing 0.1, Mixup
  0.8, CutMix 1.0, RandAugment (2 ops, magnitude 9, std 0.5). Left out:
  random erasing (0.25; FINETUNE.md: "its effect is smaller than random
  variance"), which this house does not implement. tiny and tiny_scratch:
  the short recipe every method's tiny fine-tune shares (1000 steps of batch
  64 at lr 1e-3 on whole images with flips, none of the 100-epoch
  regularisers, a LeCun-normal classifier)."""
  scratch = variant == 'tiny_scratch'
  p = get_config('tiny' if scratch else variant or None)
  c = common.classification_config(p, mode='finetune')
  c.classifier.update(dict(representation='tokens', head='linear', dropout=0.0))
  c.optimizer.update(dict(weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=None))
  if variant in ('tiny', 'tiny_scratch'):
    c.classifier.head_init = 'normal'
    c.data.update(dict(min_area=1.0))
    c.total_steps = 1000
    c.batch_size = 64
    c.optimizer.update(dict(lr=1e-3, warmup_steps=25))
    c.log_every = 50
    c.checkpoint.every = 500
    return c
  c.backbone.mae.model.drop_path = 0.1
  c.classifier.update(dict(label_smoothing=0.1, mixup=0.8, cutmix=1.0, layer_decay=0.65))
  c.data.update(dict(randaugment=(2, 9, 0.5), min_area=0.08))
  common.epoch_schedule(c, examples=EXAMPLES[p.data.name] - c.data.held_out_examples,
                        batch=1024, base_lr=5e-4, epochs=100, warmup_epochs=5)
  c.eval.update(dict(split='validation', every=5000))
  return c
