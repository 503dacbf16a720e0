"""Golden losses: steps 1-20 of every method's `tiny` run (configs/METHOD.py:tiny,
on the built-in dataset, 8 fake devices, every step logged), against the
values stored in tests/golden/losses.json. A change that means to move them
re-records them (python tests/golden/record.py) and says why in its commit.

The tolerance was measured on this machine type: the same runs on 1 device
instead of 8 (reductions split and reordered) differ from the 8-device
losses by at most the relative amount in losses.json's `measured_spread`;
the test allows RTOL, or SPREADS x a method's own spread where that is
larger. For most methods that is 1e-5, far below what any change to a
model, a loss or the data stream moves (1e-3 and up). PatchFormer `tiny`'s
patch encoder normalises nothing (resnet_norm='none'), so reordered sums
grow over the 20 steps to a spread of 1.5e-4, and its tolerance is 7.7e-4;
step 1's loss (a forward pass only, before any update) is held to RTOL for
every method, so a change to the model, the loss or the data still shows.
"""

import importlib
import json
import os

import numpy as np
import pytest
from conftest import ROOT

GOLDEN = os.path.join(ROOT, 'tests', 'golden', 'losses.json')
STEPS = 20
RTOL = 1e-5  # 20x the 1-vs-8-device spreads of igpt and randsac (2.3e-7, 4.9e-7)
SPREADS = 5   # a method's tolerance: max(RTOL, SPREADS x its measured spread)


def tiny_methods() -> list[str]:
  """Self-supervised methods whose config file has a `tiny` variant."""
  from configs import common
  from ssl_jax.methods import registry
  names = []
  for name in registry.self_supervised():
    module = common.method_config_module(name)
    if module is not None and 'tiny' in getattr(module, 'VARIANTS', ()):
      names.append(name)
  return names


def tiny_losses(method: str, data_dir: str, workdir: str, devices=None) -> list[float]:
  """The losses of steps 1-STEPS of configs/METHOD.py:tiny (its schedule
  unchanged: the run stops after STEPS steps)."""
  from ssl_jax.core import train
  config = importlib.import_module(f'configs.{method}').get_config('tiny')
  config.data.data_dir = data_dir
  config.log_every = 1
  train.run(config, workdir, devices=devices, stop_after=STEPS)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}
  return [records[s] for s in range(1, STEPS + 1)]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize('method', tiny_methods())
def test_tiny_losses_match_the_golden_ones(method, shapes_data_dir, tmp_path):
  with open(GOLDEN) as f:
    golden = json.load(f)
  assert method in golden['losses'], (
      f'no golden losses for {method!r}: record them with python tests/golden/record.py')
  got = tiny_losses(method, shapes_data_dir, str(tmp_path))
  want = golden['losses'][method]
  np.testing.assert_allclose(got[0], want[0], rtol=RTOL,
                             err_msg=f'{method}: the loss of step 1 moved')
  rtol = max(RTOL, SPREADS * golden['measured_spread'][method])
  np.testing.assert_allclose(got, want, rtol=rtol,
                             err_msg=f'{method}: steps 1-{STEPS} moved')


def test_recording_refuses_losses_that_depend_on_the_number_of_devices(monkeypatch, tmp_path):
  """tests/golden/record.py writes nothing when a method's 1- and 8-device
  losses differ beyond MAX_SPREAD (the end-to-end tests rely on it), and
  records the spread when they agree."""
  import sys

  from ssl_jax.data import shapes
  monkeypatch.syspath_prepend(os.path.join(ROOT, 'tests', 'golden'))
  import record
  golden = tmp_path / 'losses.json'
  monkeypatch.setattr(sys.modules[__name__], 'GOLDEN', str(golden))
  monkeypatch.setattr(shapes, 'prepare', lambda *a, **k: None)
  eight = np.linspace(2.0, 1.0, STEPS)
  drift = {'apart': 3 * record.MAX_SPREAD, 'close': record.MAX_SPREAD / 3}

  def losses(method, data_dir, workdir, devices=None):
    return list(eight if devices is None else eight * (1 + drift[method]))

  monkeypatch.setattr(sys.modules[__name__], 'tiny_losses', losses)
  monkeypatch.setattr(record, 'test_golden', sys.modules[__name__])
  monkeypatch.setattr(sys, 'argv', ['record.py', '--methods=close,apart',
                                    f'--data_dir={tmp_path}'])
  with pytest.raises(SystemExit, match=r'apart: 1 and 8 devices differ by 3\.00e-03'):
    record.main()
  assert not golden.exists()
  monkeypatch.setattr(sys, 'argv', ['record.py', '--methods=close', f'--data_dir={tmp_path}'])
  record.main()
  with open(golden) as f:
    written = json.load(f)
  np.testing.assert_allclose(written['measured_spread']['close'], drift['close'], rtol=1e-6)
  assert written['losses']['close'] == list(eight)
