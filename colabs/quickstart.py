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
# # ssl_jax quick start
#
# Pretrain PatchFormer's `tiny` network on the built-in dataset, stopping
# half-way as a preemption would, plot its metrics from `metrics.jsonl`,
# then resume it: the second run continues from the first one's last
# checkpoint. On Colab's CPU runtime the default 2 x 100 steps take a few
# minutes; set `STEPS` lower for a smoke run.

# %% tags=["parameters"]
STEPS = 100  # steps before the stop; the resumed run does as many more
DATA_DIR = ''  # where the built-in dataset is (or is generated): '' = WORKDIR/tfds
REPO = ''  # on Colab: the URL of the ssl_jax repository to install from
WORKDIR = '/tmp/ssl_jax_quickstart'

# %%
# On Colab: install the package at the exact tested versions. Elsewhere
# (a checkout with `pip install -c requirements.lock -e .`) nothing to do.
import subprocess
import sys

if 'google.colab' in sys.modules:
  if not REPO:
    raise ValueError('set REPO (the parameters cell) to the URL of the ssl_jax repository')
  subprocess.run(f'git clone -q {REPO} ssl_jax && '
                 'pip install -q -c ssl_jax/requirements.lock -e ssl_jax', shell=True, check=True)
  sys.path.insert(0, 'ssl_jax')

# %%
import json
import os
import shutil

import matplotlib.pyplot as plt

from configs import patchformer
from ssl_jax.core import train
from ssl_jax.data import shapes

data_dir = DATA_DIR or os.path.join(WORKDIR, 'tfds')
shapes.prepare(data_dir)  # the built-in dataset, generated here (about a minute, once)
shutil.rmtree(os.path.join(WORKDIR, 'run'), ignore_errors=True)

config = patchformer.get_config('tiny')
config.data.data_dir = data_dir
config.total_steps = 2 * STEPS
config.optimizer.warmup_steps = max(1, STEPS // 10)
config.log_every = max(1, STEPS // 10)
config.checkpoint.every = STEPS
config.eval.every = STEPS
first = train.run(config, os.path.join(WORKDIR, 'run'), stop_after=STEPS)  # as if preempted
print('stopped at step', first.last_step)

# %% [markdown]
# Every logged step is one JSON object in `metrics.jsonl` (TensorBoard reads
# the event files in the same directory).

# %%
def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [(r['step'], r['loss']) for r in records if 'loss' in r]

steps, values = zip(*losses(os.path.join(WORKDIR, 'run')))
plt.plot(steps, values)
plt.xlabel('step')
plt.ylabel('pretraining loss')
plt.show()

# %% [markdown]
# ## Resume
#
# Running the same config on the same workdir resumes from its last
# checkpoint: the data stream and the random keys continue where they
# stopped, so the result is the same as one uninterrupted run
# (`python main.py` does the same when rerun after a preemption).

# %%
second = train.run(config, os.path.join(WORKDIR, 'run'))
print('resumed from step', STEPS, 'and stopped at step', second.last_step)
assert second.last_step == 2 * STEPS
steps, values = zip(*losses(os.path.join(WORKDIR, 'run')))
plt.plot(steps, values)
plt.axvline(STEPS, color='grey', linestyle=':')
plt.xlabel('step')
plt.ylabel('pretraining loss')
plt.show()
