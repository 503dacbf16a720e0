r"""Does training the tasks together help? The multi-task ViT at the `tiny`
scale on ssl_jax_shapes/upright (where rotation is learnable), every row
with the same images seen (batch 64, 1000 steps):

  each task alone | all six in one pass per view | all six in separate
  passes (the report's k x N alternative: the control for its claim) | all
  minus each task | SiT's set (contrastive, rotation, inpainting) |
  relative position alone and all six with the pairs' position embeddings
  withheld (against the literal rows) | random initialisation

Every row pretrains configs/multitask_vit.py:tiny with the row's overrides
once per seed, then measures with the loop and configs users run
(benchmarks/ablation.py, shared with benchmarks/dv2.py): the linear probe of
the representation chosen on held-out images (`--layer_sweep`) and the kNN
top-1 of that representation, a fine-tune on the class-balanced 10% of the
labels (configs/finetune.py:multitask_vit_tiny; from scratch for random
init), and the pretraining ms/step (timed back to back in one process after
the runs). Mean ± sample std over --seeds seeds.

  python benchmarks/multitask_vit.py --workdir=/tmp/ssl_jax_mtvit_bench --seeds=3

Resumable row by row (each run from its own workdir; a finished one is read
back); --rows picks rows, --list prints them, --quick shortens every run 4x
(a smoke run, not a measurement). The table measured with it is in the
README (Multi-task ViT), with its running time on 2 cores.
"""

from __future__ import annotations

import os
import sys

from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import ablation  # noqa: E402
from ssl_jax.methods.multitask_vit.tasks import TASKS  # noqa: E402

SIT = ('contrastive', 'rotation', 'inpainting')


def _row(name: str, tasks, **overrides) -> ablation.Row:
  keys = (('multitask_vit.tasks', ','.join(tasks)),)
  keys += tuple((f'multitask_vit.{k}', v) for k, v in overrides.items())
  return ablation.Row(name, 'multitask_vit', 'tiny', keys)


def rows() -> list[ablation.Row]:
  out = [_row(f'{t} alone', (t,)) for t in TASKS]
  out.append(_row('all, one pass', TASKS))
  out.append(_row('all, separate passes', TASKS, passes='separate'))
  out += [_row(f'all - {t}', [u for u in TASKS if u != t]) for t in TASKS]
  out.append(_row("SiT's set (contrastive, rotation, inpainting)", SIT))
  withheld = {'relative_position.shortcut': 'withheld'}
  out.append(_row('relative_position alone, positions withheld', ('relative_position',),
                  **withheld))
  out.append(_row('all, one pass, positions withheld', TASKS, **withheld))
  out.append(ablation.Row('random init', 'multitask_vit', 'tiny', random=True))
  return out


if __name__ == '__main__':
  app.run(ablation.script(
      rows, name='multitask_vit', default_workdir='/tmp/ssl_jax_mtvit_bench', knn=True,
      title='Multi-task ViT at the tiny scale (ssl_jax_shapes/upright, 1000 test images, '
            '10 classes)'))
