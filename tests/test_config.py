"""Bad configs stop the run before anything compiles, with one clear line."""

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, small_config

from configs import patchformer
from ssl_jax.core import validation


def test_paper_and_tiny_configs_are_valid():
  validation.validate(patchformer.get_config(), num_devices=32, num_processes=4)
  validation.validate(patchformer.get_config('tiny'), num_devices=8)


def test_paper_values():
  c = patchformer.get_config()
  assert (c.data.image_size, c.patchformer.patch_size, c.batch_size, c.total_steps) == (
      224, 16, 128, 300_000)
  m = c.patchformer.model
  assert (m.width, m.num_layers, m.heads, m.mlp_ratio, tuple(m.stage_sizes)) == (
      1024, 10, 16, 4, (3, 4, 6))
  assert (c.optimizer.lr, c.optimizer.weight_decay, c.patchformer.mask_ratio) == (
      2e-4, 1e-3, 0.6)
  assert (c.patchformer.target.bits, c.patchformer.target.size,
          c.patchformer.target.label_noise) == (2, 8, 0.01)


def test_patch_networks_standardise_a_pretrained_backbones_features_not_a_random_ones():
  # Statistics fitted to a random network go stale as soon as it trains
  # (configs/common.py:patch_network_finetune_config): from scratch, the
  # tiny recipe reads the raw features; everything else is the same recipe.
  from configs import finetune
  for method in ('selfie', 'dv2'):
    tuned, scratch = (finetune.get_config(f'{method}_{v}') for v in ('tiny', 'tiny_scratch'))
    assert (tuned.classifier.whiten, tuned.classifier.whiten_kind) == (True, 'per_feature')
    assert scratch.classifier.whiten is False and scratch.init.workdir is None
    for c in (tuned, scratch):
      c.classifier.whiten = None
      c.init.workdir = None
    assert tuned.to_dict() == scratch.to_dict(), method


@pytest.mark.parametrize('key,value,message', [
    ('patchformer.mask_ratio', 1.5, 'config.patchformer.mask_ratio=1.5 is not allowed: must be a number in (0, 1)'),
    ('patchformer.mask_ratio', 0.0, 'patchformer.mask_ratio=0.0'),
    ('patchformer.patch_size', 7, 'must be a positive integer that divides data.image_size=32'),
    ('batch_size', 12, 'config.batch_size=12 is not allowed: must be divisible by the number of devices (8)'),
    ('patchformer.mask_block', 3, 'patchformer.mask_block=3'),
    ('patchformer.target.size', 3, 'a power of two'),
    ('patchformer.model.heads', 5, 'divides model.width=32'),
    ('optimizer.warmup_steps', 10, 'an integer in [0, total_steps=6)'),
    ('optimizer.lr', -1.0, 'config.optimizer.lr=-1.0'),
    ('compute_dtype', 'float16', "one of 'float32', 'bfloat16'"),
    ('sharding.fsdp_axis_size', 3, 'divides the 8 devices'),
    ('patchformer.augment.max_bits', 1, 'patchformer.augment.max_bits=1'),
    ('total_steps', 0, 'config.total_steps=0 is not allowed: must be an integer > 0'),
    ('checkpoint.keep_period', -2, 'checkpoint.keep_period=-2 is not allowed: must be an integer >= 0'),
    ('patchformer.model.resnet_norm', 'batch', "resnet_norm='batch' is not allowed: must be one of ('layer', 'none')"),
])
def test_bad_values(key, value, message):
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(small_config(**{key: value}), num_devices=8)
  assert message in str(e.value)
  assert '\n' not in str(e.value)


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown variant 'huge'.*allowed: '', 'tiny'"):
    patchformer.get_config('huge')


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_cli_rejects_unknown_key_wrong_type_and_bad_value(tmp_path):
  base = ['--config=configs/patchformer.py:tiny', f'--workdir={tmp_path}/w']
  unknown = _main(*base, '--config.patchformer.mask_ratoi=0.5')
  assert unknown.returncode == 2
  assert unknown.stderr.strip().splitlines()[-1].startswith(
      "error: --config.patchformer.mask_ratoi: no such key 'mask_ratoi' "
      "(did you mean 'mask_ratio'?)")
  wrong_type = _main(*base, '--config.batch_size=abc')
  assert wrong_type.returncode == 2
  assert wrong_type.stderr == 'error: --config.batch_size=abc: expected an integer\n'
  bad = _main(*base, '--config.patchformer.mask_ratio=1.5')
  assert bad.returncode == 2
  assert bad.stderr == (  # one line (JAX's INFO records of its backends are not shown)
      'error: config.patchformer.mask_ratio=1.5 is not allowed: must be a number in (0, 1)\n')
  assert not os.path.exists(f'{tmp_path}/w/checkpoints')  # nothing started


_VALIDATE_WITHOUT_TF = """
import importlib, sys
import jax
from ssl_jax.core import validation
for module, variants in (
    ('patchformer', ['tiny']), ('randsac', ['tiny']), ('igpt', ['tiny']), ('selfie', ['tiny']),
    ('dv2', ['tiny']), ('multitask_vit', ['tiny']), ('mae', ['tiny']),
    ('linear_probe', ['patchformer_tiny', 'pixels_tiny', 'dv2_tiny', 'mae_tiny']),
    ('finetune', ['randsac_tiny', 'selfie_tiny', 'multitask_vit_tiny', 'igpt_tiny_scratch'])):
  for variant in variants:
    config = importlib.import_module(f'configs.{module}').get_config(variant)
    validation.validate(config, jax.device_count())
print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tensorflow_datasets'}))
"""


def test_validating_a_config_loads_no_tensorflow():
  """main.py validates the config before the input pipeline loads
  TensorFlow, so that a bad value is refused in the seconds JAX takes to
  load, not the ten or so that both take: validation, every method's module
  and the probe and fine-tune configs import none (ssl_jax.data's names load
  lazily; ViewSpec and the data options' checks live in data/options.py)."""
  out = subprocess.run([sys.executable, '-c', _VALIDATE_WITHOUT_TF], capture_output=True,
                       text=True, cwd=ROOT, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '[]', out.stdout


@pytest.mark.parametrize('args, line', [
    (['--config.optimizer.lr=abc'], 'error: --config.optimizer.lr=abc: expected a number'),
    (['--config.total_steps=1.5'], 'error: --config.total_steps=1.5: expected an integer'),
    (['--config.data.flip=maybe'],
     'error: --config.data.flip=maybe: expected a boolean (true or false)'),
    (['--config=configs/patchformer.py:small'],
     "error: --config=configs/patchformer.py:small: unknown variant 'small' of "
     "configs/patchformer.py; allowed: '', 'tiny'"),
    (['--config=configs/patchformr.py'],
     "error: --config=configs/patchformr.py: no config file 'configs/patchformr.py'; "
     'files there: common.py, dv2.py, finetune.py, igpt.py'),
    (['--workdir=MISSING'], 'error: --workdir is required (where checkpoints and metrics go)'),
    (['--workdir='], 'error: --workdir is empty: give the folder where checkpoints'),
    (['--config={tmp}/broken.py'], 'error: --config={tmp}/broken.py: the config file does not '
     "load: NameError: name 'undefined_name' is not defined"),
    pytest.param(['--workdir={tmp}/file/w'],
                 'error: cannot write to workdir {tmp}/file/w: Not a directory',
                 marks=[pytest.mark.slow, pytest.mark.e2e]),  # these two start JAX
    pytest.param(['--config.data.name=folder', '--config.data.data_dir={tmp}/images',
                  '--config.data.split=val'],
                 "error: config.data.name='folder', config.data.split='val': Image folder "
                 "'{tmp}/images': Split 'val' not found (available splits: ['train'];",
                 marks=[pytest.mark.slow, pytest.mark.e2e]),
    (['stray'], 'error: unexpected arguments: stray (overrides are --config.KEY=VALUE)'),
    (['--seeds=0'], 'error: --seeds=0: must be an integer >= 1'),
    (['--stop_after=0'], 'error: --stop_after=0: must be an integer >= 1, for a training run'),
    (['--stop_after=5', '--sweep'], 'error: --stop_after=5: must be an integer >= 1, for a'),
    (['--peer_timeout=0'], 'error: --peer_timeout=0.0: must be > 0 seconds'),
    (['--seeds=2', '--sweep'],
     'error: pass at most one of --sweep, --layer_sweep, --low_data, --seeds'),
])
def test_cli_user_errors_are_one_line_with_status_2(tmp_path, args, line):
  """Each user error: exit status 2 and exactly one line on stderr, which
  names the flag or key; nothing is created or changed in --workdir."""
  (tmp_path / 'file').write_text('not a directory')
  (tmp_path / 'broken.py').write_text('def get_config():\n  return undefined_name\n')
  for label in ('a', 'b'):
    os.makedirs(tmp_path / 'images' / 'train' / label)
  flags = {'--config': '--config=configs/patchformer.py:tiny',
           '--workdir': f'--workdir={tmp_path}/w'}
  for arg in args:
    if arg.startswith(tuple(flags)) and arg.split('=')[0] in flags:
      flags[arg.split('=')[0]] = arg
  rest = [a for a in args if a.split('=')[0] not in flags]
  argv = [a.format(tmp=tmp_path) for a in [*flags.values(), *rest]
          if a != '--workdir=MISSING']
  out = _main(*argv)
  assert out.returncode == 2, out.stderr
  assert len(out.stderr.splitlines()) == 1, out.stderr
  assert out.stderr.startswith(line.format(tmp=tmp_path)), out.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_cli_unprepared_dataset_says_how_to_prepare_it(tmp_path):
  start = time.time()
  out = _main('--config=configs/patchformer.py:tiny', f'--workdir={tmp_path}/w',
              f'--config.data.data_dir={tmp_path}/tfds', '--config.data.name=mnist')
  assert out.returncode == 2
  assert "error: config.data.name='mnist', config.data.split='train':" in out.stderr
  assert f'tfds build mnist --data_dir={tmp_path}/tfds --file_format=array_record' in out.stderr
  assert time.time() - start < 120  # no download attempted
  assert not os.path.exists(f'{tmp_path}/tfds/downloads/mnist')
