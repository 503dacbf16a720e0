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

Variants (each comes from its method's config file, configs/METHOD.py:
LINEAR_PROBE_VARIANTS and linear_probe_config):
  patchformer_tiny  the network of configs/patchformer.py:tiny, on ssl_jax_shapes.
  patchformer       the paper's network on imagenet2012 (224x224).
  pixels_tiny       the baseline: a linear classifier on raw pixels
                    (64x64x3 = 12288 inputs), same data, steps and optimizer.
  randsac_tiny, randsac, randsac_cifar10
                    the networks of configs/randsac.py (tiny, ImageNet-1K
                    ViT-B, CIFAR-10 ViT-T), representation 'encoder': the
                    encoder's output averaged over tokens (D.3). randsac and
                    randsac_cifar10 are the paper's probe (Table 19: LARS,
                    base lr 0.1, batch 16384, 90 epochs, a BatchNorm
                    without affine parameters before the classifier, as
                    MAE's; see configs/randsac.py); randsac_tiny is this
                    file's AdamW probe on whitened features.
  igpt_tiny, igpt_l, igpt_l_cifar10, igpt_l_cifar100
                    the networks of configs/igpt.py (tiny; iGPT-L on ImageNet
                    at 32x32), representation: the middle layer's normed
                    output averaged over positions (the paper's best
                    probes sit mid-network; pick one with
                    --config.classifier.representation=layer_K). The _cifar
                    variants probe ImageNet features on CIFAR (Table 1).
                    iGPT's own probes are logistic regressions: run them
                    with --layer_sweep (every layer, Figure 2) or
                    --low_data (Table 4), e.g.
                      python main.py --config=configs/linear_probe.py:igpt_tiny \
                          --layer_sweep --config.init.workdir=workdirs/igpt_tiny \
                          --workdir=workdirs/igpt_tiny_layers
  selfie_tiny, selfie_allp_tiny, selfie, selfie_allp; dv2_tiny, dv2, dv2_cifar10
                    the networks of configs/selfie.py and configs/dv2.py:
                    representation 'patch_view' (Selfie, Allp: u from every
                    patch) or 'double_view' (DV2: the image view I and the
                    patch view I^ concatenated; 'image_view', 'patch_view'
                    and every stack, patch_res2..4 and image_res2..5, by
                    name). DV2 4.4 probes each stack: --layer_sweep chooses
                    the representation on the held-out images. The paper-size
                    variants use 4.1's supervised stage (AdamW, lr 1e-4,
                    batch 32, 5k steps); STL-10 reads its 5k labelled
                    images, 10% held out.
  multitask_vit_tiny, multitask_vit_cifar10, multitask_vit
                    the ViTs of configs/multitask_vit.py, representation
                    'contrastive_token' (also 'cls', 'rotation_token',
                    'tokens', layer_k; --layer_sweep chooses).
  mae_tiny, mae     the ViT encoders of configs/mae.py, representation 'cls'
                    (also 'tokens', layer_k); mae is MAE's own probe (LARS,
                    batch 16384, 90 epochs, per-feature normalisation).
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
* Augmentation: ImageNet keeps the random resized crop (area 0.08-1) and
  flip of MAE's and MoCo v3's probes. tiny trains on whole images with
  random flips (data.min_area=1.0): on 64x64 shapes a crop of 35% of the
  area cuts away the shape that is the class, and the probe then learns
  from views unlike the test's. Measured (features of the pretraining
  benchmark's checkpoint, whitened): 400 Adam steps on whole-image views
  give 28% for the pretrained features and 21% for random init, while the
  probe trained through random resized crops gave 22% and 22%.
* Whitening (classifier.whiten): the classifier reads the features whitened
  with their mean and covariance on the first whiten_examples training
  images (10000; tiny: 5000), fitted once when the probe starts and frozen.
  A whitening followed by a linear layer is a linear classifier of the
  features, so this changes what the optimiser reaches in its budget, not
  what the probe can express. MAE and MoCo v3 normalise each feature (a
  BatchNorm without affine parameters) for the same reason; that is not
  enough at the tiny budget: PatchFormer tiny's features have a condition
  number ~1e7, 5 of 128 directions holding 99% of the variance. Measured
  on cached attention_pool features of 5000 training images (top-1 on 1000
  test images): with per-feature normalisation, 400 Adam steps at batch 64
  reach 14-17% for the pretrained features and 17% for random init, and
  full-batch Adam needs 3000 steps to reach 30% (pretrained) / 20%
  (random); whitened, full-batch Adam reaches 32% / 22% within 100 steps.
  Off for raw pixels (12288 inputs).
Expected result (tiny): see benchmarks/evaluation.py, which prints
pretrained vs random-init vs raw-pixel probes measured on this setting.
"""

from __future__ import annotations

import ml_collections

from configs import common

DEFAULT = 'patchformer_tiny'
VARIANTS = tuple(sorted(common.method_variants('linear_probe')))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.method_config('linear_probe', arg, DEFAULT, 'linear_probe.py')
