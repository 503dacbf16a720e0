"""Shared fixtures. Eight fake CPU devices, set before jax is imported, so
multi-device behaviour is tested on a laptop."""

import os

# LLVM's optimisation level 1 instead of XLA's default 3: compiling is most
# of what the tests spend, and level 1 compiles DV2's tiny step in about 2/3
# of the time at the same speed per step and the same losses (level 0
# halves it, but runs 3x slower). benchmarks/ and main.py keep the default.
# Set for the processes the tests launch too (they inherit the environment).
COMPILE_FLAGS = '--xla_backend_optimization_level=1'
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_backend_optimization_level' not in _flags:
  _flags += ' ' + COMPILE_FLAGS
os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent compilation cache per test session, shared with the
# processes the tests launch: the same small programs are compiled by many
# tests (and by every resumed subprocess) only once. Removed at exit.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  _CACHE = tempfile.mkdtemp(prefix='ssl_jax_test_jit_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.2'

# Folder indexes (ssl_jax/data/folder.py) of the tests' temporary image
# folders go to a temporary cache, not the user's ~/.cache/ssl_jax.
if 'SSL_JAX_CACHE' not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  _INDEX_CACHE = tempfile.mkdtemp(prefix='ssl_jax_test_cache_')
  atexit.register(shutil.rmtree, _INDEX_CACHE, ignore_errors=True)
  os.environ['SSL_JAX_CACHE'] = _INDEX_CACHE

import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def tree_digest(path, skip=()):
  """{relative path: sha256} of every file under `path`, except under
  directories named in `skip`: what a refused or failed run must not change."""
  import hashlib
  out = {}
  for root, dirs, files in os.walk(path):
    dirs[:] = [d for d in dirs if d not in skip]
    for name in files:
      full = os.path.join(root, name)
      with open(full, 'rb') as f:
        out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def unoptimised_jit(fn, **jit_kwargs):
  """jax.jit(fn) with XLA's backend optimisation off. For tests that read
  properties of a function (what changes when an input changes, shapes,
  masks) rather than stored numbers: at test shapes the programs' run time
  is nothing and LLVM's optimisation is most of their compile (Selfie's tiny
  init: 24 s -> 8 s). Values may differ from the optimised program's in the
  last bits."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(fn, compiler_options={'xla_backend_optimization_level': 0}, **jit_kwargs)


def small_config(**overrides):
  """The `tiny` config shrunk further so that it compiles in seconds: 32x32
  images, a 4x4 patch grid, unblocked masks, one stack, one transformer
  layer. Steps and checkpoints are set by each test."""
  from configs import patchformer
  c = patchformer.get_config('tiny')
  c.data.name = 'ssl_jax_shapes/small'
  c.data.image_size = 32
  c.batch_size = 16
  c.total_steps = 6
  c.log_every = 1
  c.checkpoint.every = 3
  c.optimizer.warmup_steps = 2
  c.patchformer.mask_block = 1
  c.patchformer.model.update(dict(stage_sizes=(1,), resnet_width=8, stem_width=8,
                                  width=32, num_layers=1, heads=2, pool_heads=2,
                                  decoder_width=8))
  c.eval.update(dict(split='test[:96]', train_split='train[:160]', batch_size=48, every=15,
                     fewshot_shots=(1, 5), fewshot_seeds=2, knn_k=5))
  return _override(c, overrides)


def small_classifier_config(mode='linear', **overrides):
  """A linear probe ('linear') or fine-tune ('finetune') of small_config's
  network, with the settings of configs/linear_probe.py / finetune.py: the
  tiny probe's, or section 2.2's fine-tune classifier (masking, dropout,
  label smoothing, the residual head started at zero) with the tiny
  fine-tune's optimizer."""
  from configs import common, finetune, linear_probe
  c = common.classification_config(small_config(), mode=mode)
  tiny = (linear_probe if mode == 'linear' else finetune).get_config('patchformer_tiny')
  paper = tiny if mode == 'linear' else finetune.get_config('patchformer')
  c.classifier.update(paper.classifier.to_dict())
  c.optimizer.update(tiny.optimizer.to_dict())
  c.optimizer.warmup_steps = 2
  c.total_steps = 8
  c.batch_size = 16
  c.checkpoint.every = 4
  c.log_every = 1
  c.eval.update(dict(split='test[:96]', batch_size=48, every=0))
  c.data.held_out_examples = 100  # 10 per class of the 2000 training images
  return _override(c, overrides)


class SplitReads:
  """Records, in order, which examples every evaluation pass reads
  (Evaluator._batches): 'held_out' or the split name (e.g. 'test[:96]')."""

  def __init__(self, monkeypatch):
    from ssl_jax.evaluate import evaluator
    self.reads: list[str] = []
    original = evaluator.Evaluator._batches

    def recorded(this, source):
      self.reads.append('held_out' if source is this.val else source.split)
      return original(this, source)

    monkeypatch.setattr(evaluator.Evaluator, '_batches', recorded)


def small_method_config(module, variant, data_dir, **overrides):
  """configs/MODULE.py:VARIANT on the small built-in dataset, 4 steps with a
  checkpoint every 2, and evaluation monitors on a few images; `overrides`:
  dotted keys."""
  import importlib
  c = importlib.import_module(f'configs.{module}').get_config(variant)
  c.data.update(dict(name='ssl_jax_shapes/small', data_dir=data_dir))
  c.update(dict(total_steps=4, log_every=1))
  c.checkpoint.every = 2
  c.optimizer.warmup_steps = 1
  c.eval.update(dict(split='test[:96]', train_split='train[:160]', batch_size=48, every=4,
                     fewshot_shots=(1, 5), fewshot_seeds=2, knn_k=5))
  return _override(c, overrides)


@pytest.fixture
def split_reads(monkeypatch):
  return SplitReads(monkeypatch)


def vocabulary_config(**overrides):
  """small_config's data and loop with the test method of
  tests/vocabulary_method.py (a linear code and a vocabulary-like table of
  non-gradient state); needs the `vocabulary` fixture, which registers it."""
  import ml_collections
  c = small_config()
  c.objective = 'vocabulary'
  c.vocabulary = ml_collections.ConfigDict(dict(size=6, width=4, decay=0.5))
  c.online_probe.representation = 'code'
  c.eval.update(dict(monitors=(), representation='codes'))
  return _override(c, overrides)


@pytest.fixture
def vocabulary(monkeypatch):
  """Registers the test method 'vocabulary' (tests/vocabulary_method.py)."""
  from ssl_jax.methods import registry
  monkeypatch.setitem(registry.METHODS, 'vocabulary', 'vocabulary_method')


def _override(c, overrides):
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """The built-in dataset, built once per test session."""
  from ssl_jax.data import shapes
  path = str(tmp_path_factory.mktemp('tfds'))
  shapes.prepare(path, 'small')
  return path


@pytest.fixture(scope='session')
def shapes_data_dir(tmp_path_factory, worker_id):
  """The whole built-in dataset (the tiny runs' data: 20000 training
  images, and its upright configuration where a run asks for it), built
  once per test run: pytest-xdist's workers share the run's temporary
  folder, and shapes.prepare's lease makes the others wait for the one
  that builds it (a minute on 2 cores)."""
  from ssl_jax.data import shapes
  root = tmp_path_factory.getbasetemp()
  path = (root if worker_id == 'master' else root.parent) / 'tfds_full'
  path.mkdir(exist_ok=True)
  shapes.prepare(str(path))
  return str(path)


STEPS, EVERY = 30, 5


@pytest.fixture(scope='session')
def reference(tmp_path_factory, data_dir):
  """An uninterrupted 8-device pretraining run of STEPS steps (with its
  online probe and few-shot / kNN monitors), shared by the loop's and the
  evaluation's tests."""
  from ssl_jax.core import train
  workdir = str(tmp_path_factory.mktemp('reference'))
  config = small_config(**{'data.data_dir': data_dir, 'total_steps': STEPS,
                           'checkpoint.every': EVERY})
  result = train.run(config, workdir)
  return config, workdir, result
