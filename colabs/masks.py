# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # What each method does to an image, on the device
#
# Every method draws its masks, segments and per-patch transforms inside
# the jitted step from the step's PRNG key. This notebook draws them for a
# few images of the built-in dataset (rendered here, no download), with each
# method's `tiny` network at random initialisation: the masks and views are
# the method's; the predictions in the panels are an untrained network's.

# %% tags=["parameters"]
NUM_IMAGES = 4
SEED = 0
REPO = ''  # on Colab: the URL of the ssl_jax repository to install from

# %%
import subprocess
import sys

if 'google.colab' in sys.modules:
  if not REPO:
    raise ValueError('set REPO (the parameters cell) to the URL of the ssl_jax repository')
  subprocess.run(f'git clone -q {REPO} ssl_jax && '
                 'pip install -q -c ssl_jax/requirements.lock -e ssl_jax', shell=True, check=True)
  sys.path.insert(0, 'ssl_jax')

# %%
import importlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ssl_jax.data import shapes
from ssl_jax.methods import registry
from ssl_jax.nn import masks
from ssl_jax.nn.patches import masked_image, patchify


def images(size, upright=False):
  """NUM_IMAGES images of the built-in dataset's classes, [n, size, size, 3] in [0, 1]."""
  rng = np.random.default_rng(SEED)
  out = [shapes.render(rng, label % shapes.NUM_CLASSES, size=size, upright=upright)
         for label in range(NUM_IMAGES)]
  return jnp.asarray(np.stack(out), jnp.float32) / 255.0


def show(picture, title):
  plt.figure(figsize=(12, 1.2 * NUM_IMAGES))
  plt.imshow(np.asarray(picture))
  plt.title(title)
  plt.axis('off')
  plt.show()


def method_pictures(name, variant='tiny'):
  """The panels `Method.pictures` draws (the same as TensorBoard's), for the
  method's `variant` network at random initialisation."""
  config = importlib.import_module(f'configs.{name}').get_config(variant)
  cls = registry.get(name)
  method = cls(config)
  x = images(config.data.image_size, upright='upright' in config.data.name)
  views = cls.views(config)
  batch = {'image': x if views is None else jnp.repeat(x[:, None], len(views), axis=1),
           'label': jnp.zeros((NUM_IMAGES,), jnp.int32), 'valid': jnp.ones((NUM_IMAGES,), bool)}
  key = jax.random.key(SEED)
  # Compiled, as the train step and the evaluator do (op by op, a ResNet's
  # init alone takes several times longer).
  params = jax.jit(method.init)(key, batch)
  state = jax.jit(method.init_state)(key, batch, params)
  draw = jax.jit(lambda params, x, state: method.pictures(params, x, key, state=state))
  return np.concatenate(list(np.asarray(draw(params, x, state))), axis=0)


# %% [markdown]
# ## PatchFormer: block masks
#
# 60% of the patches masked in 2x2 blocks of patches (the paper's 7x7 block
# grid at 224; here the 8x8 grid of `tiny`'s 64x64 images), a new mask per
# image and step.

# %%
from configs import patchformer

config = patchformer.get_config('tiny')
pf = config.patchformer
size, patch = config.data.image_size, pf.patch_size
grid = (size // patch, size // patch)
x = images(size)
mask = masks.block_mask(jax.random.key(SEED), NUM_IMAGES, grid, (pf.mask_block, pf.mask_block),
                        pf.mask_ratio)
print(masks.describe(grid, (pf.mask_block, pf.mask_block), pf.mask_ratio))
cells = jnp.argsort(~mask, axis=-1, stable=True)[:, :int(mask[0].sum())]  # the masked cells
shown = masked_image(patchify(x, patch), cells, grid)
show(np.concatenate([np.concatenate([a, b], axis=1) for a, b in zip(x, shown)], axis=0),
     'PatchFormer: image | masked patches (grey)')

# %% [markdown]
# ## RandSAC: segments and their order
#
# Panels: image | segments (colour; partitions as brightness) | the order
# they are predicted in (dark first, the first segment red) | the untrained
# reconstruction.

# %%
show(method_pictures('randsac'), 'RandSAC')

# %% [markdown]
# ## Selfie and DV2: the patches
#
# 16 patches (a 4x4 grid), 4 of them masked per image; DV2 also sees the
# whole image and, with transformed views, four versions of each image.

# %%
show(method_pictures('selfie'), 'Selfie')
show(method_pictures('dv2'), 'DV2')

# %% [markdown]
# ## The multi-task ViT: one view, every task
#
# Panels: the turned view | what the model reads (grayscale cells,
# masked cells grey, moved and jittered patches) | inpainting | colorization
# | relative-position pairs | jigsaw put back | the view turned back.

# %%
show(method_pictures('multitask_vit'), 'multi-task ViT')

# %% [markdown]
# ## MAE: 75% of the patches masked
#
# Panels: image | what the encoder sees | the (untrained) reconstruction.

# %%
show(method_pictures('mae'), 'MAE')
