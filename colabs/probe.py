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
# # Probe a checkpoint
#
# The layer sweep of a pretrained network (a logistic-regression probe per
# representation, each one's l2 and the best representation chosen on
# images held out of the training split, the test split read once at the
# end), its plot, and nearest neighbours in the chosen representation shown
# as images. Point `PRETRAINED` at any pretraining workdir; left empty, the
# notebook pretrains MAE's `tiny` network for `STEPS` steps first.

# %% tags=["parameters"]
STEPS = 300
PRETRAINED = ''  # a pretraining run's --workdir ('' : pretrain configs/mae.py:tiny here)
WORKDIR = '/tmp/ssl_jax_probe'
DATA_DIR = ''  # where the built-in dataset is (or is generated): '' = WORKDIR/tfds
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
import os

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

from configs import common, linear_probe, mae
from ssl_jax import api
from ssl_jax.core import feature_probe, train
from ssl_jax.data import shapes

data_dir = DATA_DIR or os.path.join(WORKDIR, 'tfds')
shapes.prepare(data_dir, 'small')  # 2000 training and 500 test images, generated here
if not PRETRAINED:
  PRETRAINED = os.path.join(WORKDIR, 'mae_tiny')
  config = mae.get_config('tiny')
  config.data.update(dict(name='ssl_jax_shapes/small', data_dir=data_dir))
  config.total_steps = STEPS
  config.optimizer.warmup_steps = max(1, STEPS // 20)
  config.log_every = max(1, STEPS // 10)
  config.checkpoint.every = STEPS
  config.eval.update(dict(every=STEPS, split='test', train_split='train[:1000]'))
  train.run_to_end(config, PRETRAINED)
model = api.load(PRETRAINED)
objective = model.config.objective
print(objective, 'at step', model.step, '; representations:', ', '.join(model.representations))

# %% [markdown]
# ## The layer sweep

# %%
probe = linear_probe.get_config(f'{objective}_tiny')
probe.backbone = common.backbone_config(model.config)  # the checkpoint's network
probe.init.workdir = PRETRAINED
probe.data.update(dict(name='ssl_jax_shapes/small', data_dir=data_dir, held_out_examples=300))
probe.eval.split = 'test'
sweep_dir = os.path.join(WORKDIR, 'layers')
rows = feature_probe.run(probe, sweep_dir, 'layers')
display(Markdown(open(os.path.join(sweep_dir, 'layers.md')).read()))
display(Image(os.path.join(sweep_dir, 'layers.png')))
chosen = next(r['representation'] for r in rows if r['chosen'])

# %% [markdown]
# ## Nearest neighbours
#
# For a few query images, the training images closest to them (cosine
# similarity of the chosen representation's features).

# %%
def render(count, seed):
  rng = np.random.default_rng(seed)
  size = probe.data.image_size
  labels = np.arange(count) % shapes.NUM_CLASSES
  return np.stack([shapes.render(rng, int(k), size=size) for k in labels]) / 255.0, labels

pool, pool_labels = render(500, seed=1)
queries, query_labels = render(5, seed=2)
f_pool = model.features(pool.astype(np.float32))[chosen]
f_query = model.features(queries.astype(np.float32))[chosen]
unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
nearest = np.argsort(-unit(f_query) @ unit(f_pool).T, axis=1)[:, :6]
fig, axes = plt.subplots(len(queries), 7, figsize=(10, 1.6 * len(queries)))
for i, row in enumerate(axes):
  row[0].imshow(queries[i])
  row[0].set_title('query', fontsize=8)
  for j, k in enumerate(nearest[i]):
    row[j + 1].imshow(pool[k])
    row[j + 1].set_title('same class' if pool_labels[k] == query_labels[i] else 'other',
                         fontsize=8)
  for ax in row:
    ax.axis('off')
plt.tight_layout()
plt.show()
print('neighbours of the same class:', float(np.mean(pool_labels[nearest] == query_labels[:, None])))
