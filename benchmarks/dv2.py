r"""DV2's ablation (section 4.5) at the `tiny` scale, with Selfie, Allp and
random initialisation, on the built-in dataset.

Every row pretrains its config (configs/dv2.py:tiny with the row's
overrides, configs/dv2.py's ablation(); configs/selfie.py:tiny and
:allp_tiny) once per seed, then measures, with the same loop and configs as
users do (benchmarks/ablation.py, shared with benchmarks/multitask_vit.py):
the linear probe of the representation chosen on held-out images
(`--layer_sweep`), a fine-tune on the class-balanced 10% of the labels
(configs/finetune.py:dv2_tiny, selfie_tiny, selfie_allp_tiny), and the
pretraining ms/step (timed back to back in one process after the runs).

The random-init rows probe the DV2 and the Selfie tiny networks (they
differ: DV2's has a fourth stack and an exchange layer) as initialised by
each seed and fine-tune them from scratch (configs/finetune.py:
dv2_tiny_scratch, selfie_tiny_scratch).
Numbers are mean ± sample std over --seeds seeds (the pretraining's and
the probe's / fine-tune's seed vary together). Every run resumes from its
own workdir and a finished one is read back, so an interrupted benchmark
picks up where it stopped, row by row; --rows picks rows (by number).

  python benchmarks/dv2.py --workdir=/tmp/ssl_jax_dv2_bench --seeds=3

Running time on 2 CPU cores, measured: Selfie's three seeds took 24
minutes (8 per seed: pretraining, layer sweep, fine-tune) beside other
work, each random-init row about 3 minutes per seed; DV2's pretraining
alone takes 4 min 37 s of its about 8 minutes per seed. 14 rows x 3 seeds:
about 5 hours. --quick shortens every run 4x (a smoke run, not a
measurement). The table measured with it is in the README (Selfie and
DV2).
"""

from __future__ import annotations

import os
import sys

from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import ablation  # noqa: E402
from configs import dv2  # noqa: E402


def rows() -> list[ablation.Row]:
  out = [ablation.Row(name, 'dv2', 'tiny', tuple((f'dv2.{k}', v) for k, v in overrides.items()))
         for name, overrides in dv2.ablation(dv2.get_config('tiny')).items()]
  return out + [ablation.Row('Selfie', 'selfie', 'tiny'),
                ablation.Row('Allp', 'selfie', 'allp_tiny'),
                ablation.Row('random init (DV2 network)', 'dv2', 'tiny', random=True),
                ablation.Row('random init (Selfie network)', 'selfie', 'tiny', random=True)]


if __name__ == '__main__':
  app.run(ablation.script(
      rows, name='dv2', default_workdir='/tmp/ssl_jax_dv2_bench', knn=False,
      title='DV2 ablation at the tiny scale (ssl_jax_shapes, 1000 test images, 10 classes)'))
