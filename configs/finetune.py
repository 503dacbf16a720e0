r"""Fine-tuning (the PatchFormer paper, section 2.2), on all or a fraction
of the labels.

Protocol: the decoder is removed; the attention-pooled embedding (the context
pooled for every grid position, averaged) goes through a residual block (the
patch encoder's bottleneck block, on a 1x1 map), dropout, and a linear
classifier; every parameter trains, with the pretraining optimizer (AdamW,
b2=0.999, eps=1e-6, weight decay 1e-3, clipping at 1.0), soft labels, and
10% of the patches masked at random in every training example. The paper's
grid: batch sizes {16, 32, 64, 128, 256} x learning rates {3e-5, 2e-4, 4e-4,
1e-3}; one command runs it and writes one table (sweep.md in the workdir),
the point chosen on the training images held out (data.held_out_examples;
the paper does not say what it chose on) and only that point scored on the
evaluation split:

  python main.py --config=configs/finetune.py:patchformer_tiny --sweep \
      --config.init.workdir=workdirs/patchformer_tiny --config.data.label_fraction=0.1 \
      --workdir=workdirs/patchformer_tiny_ft_sweep

One run (10% of the labels, the tiny setting: 1000 steps of the short
recipe below, about 8 minutes on a CPU core):

  python main.py --config=configs/finetune.py:patchformer_tiny \
      --config.init.workdir=workdirs/patchformer_tiny --config.data.label_fraction=0.1 \
      --workdir=workdirs/patchformer_tiny_ft10

Label fractions (`data.label_fraction`): class-balanced and deterministic
(`data.subset_seed`), nested (1% within 10% within 20%); on imagenet2012 the
1% and 10% fractions are tfds's `imagenet2012_subset` 1pct / 10pct splits.
Paper (ImageNet, 1% / 10% / 20%): top-1 30.3 / 65.5 / 70.2, top-5 52.0 /
82.3 / 87.6 (Tables 1-2). Top-1 / top-5 of each run: eval.json / eval.md.

Choices where the paper is silent:
* Length: 30 epochs of the labelled subset (`sweep.epochs=30`; a single run
  uses total_steps, 30 epochs of 10% ImageNet at batch 128); warmup 1000
  steps (scaled with the run length in a sweep).
* Soft labels: label smoothing 0.1. Dropout 0.1, before the classifier.
* Masking: 10% of the patches, drawn independently per example without
  blocks (a block mask cannot hit 10% of a 7x7 block grid exactly);
  evaluation sees every patch.
* Random resized crop and flip as in pretraining; the jitter crops of the
  visible patches are kept (centre crops at evaluation).

RandSAC (variants randsac, randsac_cifar10, randsac_tiny; D.3, Table 18):
the encoder without masks or decoder, its output averaged over all tokens
(no class token), a linear classifier; every parameter trains with AdamW
(base lr 5e-4 x batch / 256, weight decay 0.05, betas (0.9, 0.95): the
table cites iGPT for them), layer-wise lr decay 0.65, drop path 0.1, label
smoothing 0.1, Mixup 0.8 and CutMix 1.0 (one or the other per batch, on the
device), RandAugment (2 ops, magnitude 9, std 0.5: timm's
rand-m9-mstd0.5-inc1), random resized crop (area 0.08-1) and flip, batch
1024 (CIFAR-10: 512), 100 epochs with 5 of warmup. Paper: ImageNet-1K ViT-B
83.9 (square 16 -> 4). After configs/randsac.py:tiny:

  python main.py --config=configs/finetune.py:randsac_tiny \
      --config.init.workdir=workdirs/randsac_tiny --workdir=workdirs/randsac_tiny_ft

Choices: the head reads the encoder's final-normed tokens averaged (MAE
averages first and normalises after); the fine-tune runs at the pretraining
resolution (192 on ImageNet; the text does not give the fine-tune's), and
since the encoder's sine-cosine position encodings have no parameters,
--config.data.image_size=224 fine-tunes the same checkpoint at 224; RandAugment's geometric ops fill with
grey 128 and interpolate bilinearly (ssl_jax/data/randaugment.py).
The tiny variants (patchformer_tiny, randsac_tiny) run the short recipe of
their from-scratch variants below, so a pretrained and a random backbone are
fine-tuned alike: the papers' regularisers, cut to 500 steps, kept the
pretrained fine-tunes at or below the linear probe of the same features
(PatchFormer 27.7%, RandSAC 25.4%; from configs/randsac.py:tiny's
checkpoint the whole RandSAC recipe reached 15.2% in 500 steps, without
Mixup, CutMix and RandAugment 26.4%), where the short recipe reads 55.8%
and 79.8% with all labels (mean of 3 seeds; each method's config says how
it was chosen). The paper recipes stay in the paper-size variants.

Supervised from scratch (variants patchformer_tiny_scratch,
randsac_tiny_scratch, igpt_tiny_scratch): the tiny backbone, randomly
initialised (no init.workdir), trained on all the labels through this same
fine-tune path, with a recipe for a short run from scratch: 1000 steps with
flips, no masking, dropout, label smoothing, drop path, layer-wise decay,
Mixup, CutMix, RandAugment or generative loss, and a LeCun-normal
classifier (each method's config says its lr, batch and crops).
It is the ceiling the tiny probes are read against (README, Evaluation):

  python main.py --config=configs/finetune.py:randsac_tiny_scratch \
      --workdir=workdirs/randsac_tiny_scratch

iGPT (variants igpt_tiny, igpt_l_cifar10, igpt_l_cifar100; Step 3): the
final norm's output averaged over positions, a linear classifier, and the
classification and generative losses optimised together
(classifier.generative_weight=1). The paper fine-tunes with the
pretraining's batch (128) and Adam betas, no cosine schedule, no dropout,
and early stopping on validation accuracy: eval.select='best' scores the
5000 training images held out (data.held_out_examples) every 2000 steps,
keeps the best step's state, and scores the test split once, for it (the
paper does not say how large its validation set is); CIFAR augmentation: 4 pixels of
reflection padding, a random 32x32 crop and a flip (data.crop='pad'). Its
learning rate is not reported: 3e-5 here (constant), with --sweep over
sweep.lr. Paper: iGPT-L CIFAR-10 99.0, CIFAR-100 88.5. The palette is the
checkpoint's own, whatever the fine-tuning data:

  python main.py --config=configs/finetune.py:igpt_tiny \
      --config.init.workdir=workdirs/igpt_tiny --workdir=workdirs/igpt_tiny_ft

Selfie and DV2 (variants selfie, selfie_allp, selfie_tiny, selfie_allp_tiny,
selfie_tiny_scratch; dv2, dv2_cifar10, dv2_tiny, dv2_tiny_scratch): DV2 4.1's
supervised stage: every parameter trains with AdamW (weight decay 1e-4),
lr 1e-4, batch 32, 5k steps (250 warmup, cosine), a linear classifier on
'image_res4' (Selfie: the whole image through the pretrained stacks) or
'double_view' (DV2: the image view and the patch view concatenated; 4.4
compares 'image_view' and 'patch_view' too). STL-10 reads the 5k labelled
images, 10% of them held out (4.1). The tiny variants share one short
recipe (1000 steps at lr 1e-2, 10% of the labels, a LeCun-normal head on
the features standardised one by one, from scratch on the raw ones:
configs/common.py says why):

  python main.py --config=configs/finetune.py:dv2_tiny \
      --config.init.workdir=workdirs/dv2_tiny --workdir=workdirs/dv2_tiny_ft10

The multi-task ViT (multitask_vit, multitask_vit_cifar10, multitask_vit_tiny,
multitask_vit_tiny_scratch) and MAE (mae, mae_tiny, mae_tiny_scratch): the
ViT without its task heads or decoder. The multi-task ViT reads 'cls' with
DeiT's recipe (as SiT fine-tunes); MAE reads the patch tokens averaged with
MAE's (FINETUNE.md: layer decay 0.65, drop path 0.1, Mixup, CutMix,
RandAugment, label smoothing, 100 epochs at batch 1024); their tiny
variants run the short recipe above (configs/multitask_vit.py,
configs/mae.py).

  python main.py --config=configs/finetune.py:mae_tiny \
      --config.init.workdir=workdirs/mae_tiny --workdir=workdirs/mae_tiny_ft
"""

from __future__ import annotations

import ml_collections

from configs import common

DEFAULT = 'patchformer_tiny'
VARIANTS = tuple(sorted(common.method_variants('finetune')))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.method_config('finetune', arg, DEFAULT, 'finetune.py')
