r"""DV2 pretraining: double view network with dynamic vocabulary (DV2 3.3-3.6, 4.1).

Commands:

  # Laptop / CI: the built-in offline dataset on 2 CPU cores.
  python main.py --config=configs/dv2.py:tiny --workdir=workdirs/dv2_tiny

  # STL-10 (4.1: pretrain on the 100k unlabelled images), one accelerator host:
  python main.py --config=configs/dv2.py --workdir=workdirs/dv2_stl10 \
      --config.data.data_dir=/path/to/tensorflow_datasets

  # The baseline of 3.3 (every adaptation off; see ABLATION below):
  python main.py --config=configs/dv2.py --workdir=workdirs/dv2_baseline \
      --config.dv2.double_view=False --config.dv2.model.exchange_layers=0 \
      --config.dv2.vocabulary.enabled=False --config.dv2.views=1

Variants (`--config=configs/dv2.py:VARIANT`):
  (default)  the full model on STL-10 (tfds stl10, split `unlabelled`, 100k
             images): 64x64 crops (AMDIM's, of the 96x96 images) cut into 4x4
             patches of 16x16, 4 masked; pre-activation ResNet-50 with
             GroupNorm (first three stacks on patches, all four on the
             image), exchange layers (3 layers, width 512) after res2, res3,
             res4; a 3-layer transformer of width 1024; double view; two
             dynamic vocabularies of 16384 entries, lambda 0.99; D = 4
             versions per image. 100k steps of batch 256 (versions: 64
             images x 4), AdamW (weight decay 1e-4), peak lr 3e-4 after 250
             warmup steps, cosine to 0; alpha_mp = 8, alpha_vp = 0.5,
             alpha_mi = 4, alpha_vi = 0.5.
  cifar10    the same model on CIFAR-10's training images (32x32, 4x4
             patches of 8x8), evaluated on its test split.
  tiny       2 CPU cores: ssl_jax_shapes at 32x32, 4x4 patches of 8x8, 4
             masked; stacks of one block each (widths 8 ... 64 -> 128 patch
             and 256 image features), 1-layer exchange layers of width 32, a
             2-layer transformer of width 64, vocabularies of 1024 entries,
             D = 2, L_mp's negatives from the prediction's own image (see
             "tiny's negatives"); batch 32 versions (16 images), 1000 steps.

Expected result. The paper (STL-10, fine-tuned): no pretraining 70%,
baseline 72%, DV2 79% (Table 2); its ablation (4.5) and vocabulary study
(4.6) lost their numbers. `tiny`: the README's DV2 section (measured).

The ablation of 4.5 (ABLATION below; benchmarks/dv2.py runs it), as
overrides of the full model, prefix --config.dv2.:
  baseline                 double_view=False model.exchange_layers=0
                           vocabulary.enabled=False views=1
  + double view            the baseline with double_view=True
  + hybrid self-attention  the baseline with model.exchange_layers=3 (tiny: 1)
  + dynamic vocabulary     the baseline with vocabulary.enabled=True (the
                           patch vocabulary: the image one needs the image view)
  + transformed views      the baseline with views=4 (tiny: 2)
  full minus each          the full model with one of double_view=False,
                           model.exchange_layers=0, vocabulary.enabled=False,
                           views=1
Loss normalisation: dv2.normalise='printed' (equations 15-16's N^2 M Q and
N^2) or 'balanced' (see below); vocabulary: dv2.vocabulary.size / .decay
(4.6), .normalise.

Choices where the paper is silent or garbled:
* Network: ssl_jax/nn/resnet_v2.py (stem for small patches, GroupNorm,
  dropout placement, final norm per endpoint, exchange layers with a
  position embedding per grid cell) and configs/selfie.py (transformer h,
  its inputs, the reading of "1e-3 standard variance" as a standard
  deviation of 1e-3 for every linear layer).
* Equation 14: masked representations are zeroed and, as Figure 2 says,
  "not visible to the transformer": no key of its attention. Their
  positions still query, and the output there is the prediction.
* Targets: every patch through the patch network alone (no exchange
  layers), so a target never carries context and the exchange layers never
  see a masked patch; with exchange layers the visible patches go through
  the patch network a second time, together. Gradients flow into targets
  (as Selfie's), except into the vocabularies' inputs.
* Projections: "We project all representations to 128 dimension": four
  linear maps, predictions and targets apart for patches (P^ from the
  transformer, P from the patch network) and images (I^, I).
* L_mp and L_mi normalisation: dv2.normalise. 'printed' divides the sum of
  every pair's term by the number of pairs (N^2 M Q, N^2), which gives the
  positives a weight of about 1/(N M) next to the negatives; 'balanced'
  averages the positive terms and the negative terms apart and adds them.
  'balanced' is the default: on tiny (one run each, layer-sweep test
  top-1) it read 41.1% against 28.7% for 'printed' (random init 26.7%).
* Transformed views: the D versions share their crop and flip (so the same
  grid cell is the same content) and differ in AMDIM's photometric ops;
  each version draws its own mask. Positives of a prediction: the same cell
  of every version of its image (masked or not there); of I^: every
  version's I.
* Dynamic vocabulary: ssl_jax/methods/dv2/vocabulary.py. It is fed the
  targets of the predictions (the masked patches' P, Q per version, and the
  image view's I), projected and normalised: the entries then stand for
  what is predicted, and an entry that matches a prediction's own target
  weighs nothing in its loss. The loss reads the entries before the step's
  update. Equation 20's normalisation (vocabulary.normalise): the text
  divides the sum over entries and predictions by the number of
  predictions ('predictions'); the default 'pairs' also divides by S, so
  that alpha_vp = alpha_vi = 0.5 weigh the vocabulary terms like the
  pair losses (averages of per-pair terms) next to alpha_mp = 8, rather
  than S times more; on tiny (one run each) 'pairs' read 41.1% and
  'predictions' 29.5%.
* Augmentation: AMDIM's (ssl_jax.data.ViewSpec.amdim), 64-pixel crops of
  STL-10 as AMDIM does; evaluation resizes to 70 and centre-crops 64
  (crop_fraction 64/70). AMDIM's CIFAR-10 translations (reflection padding)
  are a single-view option here, so CIFAR-10 takes the same resized crops.
* Supervised stage: 10% of STL-10's 5k labelled images held out for
  validation (data.held_out_examples=500), as 4.1 says.
* tiny's negatives (dv2.negatives='image', not the paper's): L_mp pushes
  each prediction away from the patches of its own image only (all
  versions), as Selfie's distractors are, instead of every patch of the
  batch (dv2.negatives='batch', equation 15, every other variant). The
  built-in dataset draws every image's colours at random, so patches of
  other images are told apart by colour alone, and with them L_mp learned
  no shape in 1000 steps. Measured on tiny (one run each, --layer_sweep
  test top-1 on 1000 test images, the representation chosen on held-out
  images; the same network at random initialisation: 26.7%): with
  'batch', the full model 22.5%, the baseline 26.6% (normalise='balanced')
  and 26.4% ('printed'), the full model with SimCLR-strength jitter across
  versions 26.4% and with full-circle hue jitter 31.2%; with 'image', the
  baseline 38.7% and the full model 41.1% (image_view). The
  paper's images (STL-10, CIFAR-10) are not coloured at random, and their
  variants keep equation 15's negatives.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.selfie import TINY_MODEL, amdim_augment, model_config, skeleton, tiny_schedule

VARIANTS = ('', 'cifar10', 'tiny')

# The rows of 4.5's ablation: {row: overrides of the full model (keys under
# config.dv2)}; 'exchange' and 'views' are filled in with the variant's values.
BASELINE = {'double_view': False, 'model.exchange_layers': 0, 'vocabulary.enabled': False,
            'views': 1}


def ablation(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """{row name: {dv2 key: value}} of the 4.5 ablation for `config` (a dv2
  config: the full model of its variant)."""
  d = config.dv2
  full = {'double_view': True, 'model.exchange_layers': d.model.exchange_layers,
          'vocabulary.enabled': True, 'views': d.views}
  rows = {'baseline': dict(BASELINE)}
  names = {'double_view': 'double view', 'model.exchange_layers': 'hybrid self-attention',
           'vocabulary.enabled': 'dynamic vocabulary', 'views': 'transformed views'}
  for key, name in names.items():
    rows[f'+ {name}'] = dict(BASELINE, **{key: full[key]})
  rows['full DV2'] = dict(full)
  for key, name in names.items():
    rows[f'full - {name}'] = dict(full, **{key: BASELINE[key]})
  return rows


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.variant(arg or None, VARIANTS, 'dv2.py')
  c = skeleton('dv2', data='stl10', split='unlabelled', image_size=64)

  d = c.dv2 = ml_collections.ConfigDict()
  d.grid = 4            # M = 16 patches
  d.num_masked = 4      # Q
  d.views = 4           # D
  d.double_view = True
  d.normalise = 'balanced'
  d.negatives = 'batch'  # L_mp's negatives: 'batch' (equation 15) or 'image' (a diagnostic)
  d.alpha_mp = 8.0
  d.alpha_mi = 4.0
  d.alpha_vp = 0.5
  d.alpha_vi = 0.5
  d.vocabulary = ml_collections.ConfigDict(dict(
      enabled=True, size=16384, decay=0.99, normalise='pairs', stale_after=100))
  d.augment = amdim_augment()
  d.model = model_config(stage_sizes=(3, 4, 6, 3), exchange_layers=3)

  c.online_probe = ml_collections.ConfigDict(dict(representation='', lr=1e-3))
  c.eval = common.eval_config(
      split='test', train_split='train', batch_size=512, every=10_000,
      crop_fraction=64 / 70, monitors=('fewshot', 'knn'), representation='double_view')
  if variant == 'cifar10':
    c.data.update(dict(name='cifar10', split='train', image_size=32))
    c.online_probe.representation = 'patch_view'  # offered by every ablation row
    c.eval.update(dict(train_split='train[:10000]', crop_fraction=1.0))
  if variant == 'tiny':
    d.model.update(dict(TINY_MODEL, stage_sizes=(1, 1, 1, 1), exchange_layers=1))
    d.views = 2
    d.negatives = 'image'  # see "tiny's negatives" above
    d.vocabulary.size = 1024
    c.online_probe.representation = 'patch_view'
    tiny_schedule(c, 32)  # 453 ms/step at 64 versions on 2 CPU cores, 201 ms at 32
  return c


LINEAR_PROBE_VARIANTS = ('tiny', '', 'cifar10')
FINETUNE_VARIANTS = ('tiny', 'tiny_scratch', '', 'cifar10')


def _labelled(c: ml_collections.ConfigDict) -> None:
  """STL-10's supervised stage reads the 5k labelled `train` images (10%
  held out for validation, 4.1) and reports on `test` (8k)."""
  if c.data.name == 'stl10':
    c.data.split = 'train'
  c.eval.split = 'test'


def linear_probe_config(variant: str) -> ml_collections.ConfigDict:
  """configs/linear_probe.py:dv2[_tiny|_cifar10]: a linear classifier on a
  frozen representation, 'double_view' by default (classifier.representation:
  'image_view', 'patch_view', 'double_view' (3.4: the classifier reads
  either view or their concatenation), or a stack: patch_res2..4,
  image_res2..5); --layer_sweep chooses among all of them on the held-out
  images (4.4). The paper-size variants follow 4.1's supervised stage:
  AdamW, lr 1e-4, batch 32, 5k steps (250 warmup, cosine); tiny: the shared
  tiny probe (configs/linear_probe.py)."""
  p = get_config(variant or None)
  tiny = variant == 'tiny'
  c = common.linear_probe_config(p, tiny=tiny)
  if not tiny:
    _labelled(c)
    c.batch_size = 32
    c.total_steps = 5000
    c.optimizer.update(dict(lr=1e-4, warmup_steps=250))
    c.eval.every = 1000
  return c


def finetune_config(variant: str) -> ml_collections.ConfigDict:
  """configs/finetune.py:dv2[_tiny|_tiny_scratch|_cifar10]: the whole
  network fine-tuned with a linear classifier on 'double_view' (4.4's
  "finetuning settings"; classifier.representation picks another); 4.1:
  AdamW (weight decay 1e-4), lr 1e-4, batch 32, 5k steps (250 warmup,
  cosine). tiny and tiny_scratch (random initialisation: the no-pretrain
  row of Table 2) share one short recipe: 1000 steps of batch 32 at lr 1e-2
  on whole images with flips, 10% of the labels, a LeCun-normal classifier
  on the features standardised one by one (tiny_scratch: the raw features)
  (configs/common.py:patch_network_finetune_config says how it was chosen)."""
  scratch = variant == 'tiny_scratch'
  p = get_config('tiny' if scratch else variant or None)
  c = common.patch_network_finetune_config(p, variant in ('tiny', 'tiny_scratch'),
                                           'double_view', scratch=scratch)
  if variant not in ('tiny', 'tiny_scratch'):
    _labelled(c)
  return c
