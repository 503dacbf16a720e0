"""One assembly: a run's source, task, trainer, evaluator and init checkpoint.

`assemble(config)` is the single place that turns a validated config into
the pieces a run needs; the loop (core/train.py), the sweep, the feature
probes, the pictures and sampler, the public API and the benchmarks all call
it. Nothing here compiles: the step is compiled by `Trainer.compile_step`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

from ssl_jax.config.checks import ConfigError, flatten, to_json
from ssl_jax.core import checkpoint as ckpt_lib
from ssl_jax.core import flops as flops_lib
from ssl_jax.core import optim
from ssl_jax import peers
from ssl_jax import sharding as sharding_lib
from ssl_jax.core import step as step_lib
from ssl_jax.core import validation
from ssl_jax.data import pipeline, splits
from ssl_jax.evaluate.evaluator import Evaluator, open_split
from ssl_jax.methods import registry
from ssl_jax import tasks

_MODEL_FLOPS: dict[tuple[str, int | None], float] = {}  # Trainer.model_flops, per process

DataError = pipeline.DataError  # the dataset cannot be opened


def dtype_of(config) -> Any:
  return jnp.bfloat16 if config.compute_dtype == 'bfloat16' else jnp.float32


def build_source(config: ml_collections.ConfigDict) -> pipeline.Source:
  """Opens config.data (the training examples; with data.held_out_examples,
the part held out for selection is its `held_out`); a dataset that cannot be
used raises DataError.

  With several processes, process 0 opens it first (generating the built-in
  dataset into a shared data_dir if needed) and the others wait for it.
  """
  def open_source():
    try:
      return pipeline.make_source(config.data.name, data_dir=config.data.data_dir,
                                  split=config.data.split,
                                  label_fraction=config.data.get('label_fraction', 1.0),
                                  subset_seed=config.data.get('subset_seed', 0),
                                  held_out_examples=config.data.get('held_out_examples', 0),
                                  skip_bad_images=config.data.get('skip_bad_images', False))
    except DataError as e:
      raise DataError(f'config.data.name={config.data.name!r}, '
                      f'config.data.split={config.data.split!r}: {e}') from e

  return peers.first_on_process_zero(open_source, 'dataset ready', (DataError, ConfigError))


def prepare_method(config: ml_collections.ConfigDict) -> None:
  """The method's `prepare` (e.g. fitting a palette) on process 0, for a
  pretraining or for the backbone of a probe or fine-tune from random
  initialisation (a checkpoint carries what `prepare` makes); the other
  processes wait for it."""
  if tasks.is_classification(config):
    if config.init.workdir is not None:
      return
    method, config = registry.get(config.backbone.objective), config.backbone
  else:
    method = registry.get(config.objective)
  peers.first_on_process_zero(lambda: method.prepare(config), 'method prepared',
                              (DataError, ConfigError), then_others=False)


def train_views(config: ml_collections.ConfigDict):
  """(views, share_geometry) of the training batch: the method's declared
  views (None: one view, batch['image'] [b, H, W, 3])."""
  if tasks.is_classification(config):
    return None, False
  method = registry.get(config.objective)
  return method.views(config), method.share_geometry(config)


def global_batches(config, source, mesh, start_step: int) -> Iterator[dict[str, jax.Array]]:
  """The training stream from `start_step` on, as global sharded jax.Arrays."""
  views, share = train_views(config)
  extra = {} if views is None else {'views': views, 'share_geometry': share}
  batches = pipeline.iterate(
      source, seed=config.seed, global_batch_size=validation.images_per_step(config),
      start_step=start_step, image_size=config.data.image_size, train=True,
      process_index=jax.process_index(), process_count=jax.process_count(),
      min_area=config.data.min_area, flip=config.data.flip,
      randaugment=tuple(config.data.get('randaugment', ())) or None,
      crop=config.data.get('crop', 'resized'), pad=config.data.get('pad', 4), **extra)
  sharding = sharding_lib.batch_sharding(mesh)
  for local in batches:
    yield sharding_lib.to_global(local, sharding)


def abstract_batch(config) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of one global training batch (V views: [b, V, S, S, 3];
  b counts images)."""
  b, s = validation.images_per_step(config), config.data.image_size
  views, _ = train_views(config)
  image = (b, s, s, 3) if views is None else (b, len(views), s, s, 3)
  return {'image': jax.ShapeDtypeStruct(image, jnp.float32),
          'label': jax.ShapeDtypeStruct((b,), jnp.int32),
          'valid': jax.ShapeDtypeStruct((b,), jnp.bool_)}


def one_example(config) -> dict[str, jax.ShapeDtypeStruct]:
  """The image of one training example, as a batch of one (what the
  network's parameters are initialised from)."""
  image = abstract_batch(config)['image']
  return {'image': jax.ShapeDtypeStruct((1,) + image.shape[1:], image.dtype)}


class Trainer:
  """The task, optimizer, mesh and step of a run, built once from the config
  (no compilation).

  `num_classes`: labels of the training data (None: unlabelled), for the
  classifier of a classification run and the online probe of pretraining.
  """

  def __init__(self, config: ml_collections.ConfigDict, devices=None,
               num_classes: int | None = None):
    num_devices = len(devices) if devices is not None else jax.device_count()
    validation.validate(config, num_devices, jax.process_count())
    if tasks.is_classification(config) and not num_classes:
      raise DataError(f'config.data.name={config.data.name!r} (split {config.data.split!r}) '
                      'has no labels: a classification run needs a labelled dataset')
    self.config = config
    self.num_classes = num_classes
    self.mesh = sharding_lib.make_mesh(config.sharding.fsdp_axis_size, devices)
    self.task = tasks.build(config, num_classes, dtype_of(config))
    validation.validate_representations(config, self.task.representations())
    lr_scales = None
    if tasks.is_classification(config) and config.classifier.layer_decay != 1.0:
      task = self.task

      def lr_scales(updates):
        return optim.layer_decay_scales(updates, task.layer_of, task.depth,
                                        config.classifier.layer_decay)
    self.tx = optim.make_optimizer(config, self.task.param_labels, lr_scales=lr_scales)
    self.lr_schedule = optim.schedule(config)
    self.batch_sharding = sharding_lib.batch_sharding(mesh=self.mesh)
    self.replicated = sharding_lib.replicated(self.mesh)

  def _init_fn(self):
    one = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), one_example(self.config))
    return lambda key: step_lib.init_state(self.task, self.tx, key, one)

  def abstract_state(self) -> Any:
    """The state's shapes, dtypes and shardings, without computing it."""
    shapes = jax.eval_shape(self._init_fn(), jax.random.key(self.config.seed))
    shardings = sharding_lib.state_shardings(
        shapes, self.mesh, self.config.sharding.rule, self.config.sharding.fsdp_min_size)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)

  def init_state(self, abstract) -> Any:
    """The initial state, created directly in its shardings."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    # The key is an argument (see step_lib.init_state): as a constant, XLA
    # would fold the whole initialisation at compile time.
    return jax.jit(self._init_fn(), out_shardings=shardings)(jax.random.key(self.config.seed))

  def model_flops(self) -> float:
    """Model FLOPs of one step for the global batch (ssl_jax.core.flops):
    the matmuls of the loss's forward pass and gradient, traced (not
    compiled) on the reference program of this config. Kept per process by
    the reference config and the classes (a resumed run, or another of the
    same config, does not trace the loss again: seconds for a ResNet)."""
    config = flops_lib.reference_config(self.config)
    key = (to_json(config), self.num_classes)
    if key not in _MODEL_FLOPS:
      _MODEL_FLOPS[key] = self._traced_model_flops(config)
    return _MODEL_FLOPS[key]

  def _traced_model_flops(self, config) -> float:
    task = (self.task if config.to_dict() == self.config.to_dict()
            else tasks.build(config, self.num_classes, dtype_of(config)))
    batch = abstract_batch(config)
    key = jax.eval_shape(lambda: jax.random.key(0))
    one = one_example(config)
    params = jax.eval_shape(task.init, key, one)
    state = jax.eval_shape(task.init_state, key, one, params)

    def gradient(params, state, batch, rng):
      return jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng, train=True,
                                                          state=state)
    return flops_lib.jaxpr_flops(jax.make_jaxpr(gradient)(params, state, batch, key))

  def compile_step(self, abstract, batch_shapes):
    """The compiled train step and its hardware FLOPs per step for all
    devices (XLA's cost analysis; None where the backend has none)."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    jitted = step_lib.jit_train_step(
        step_lib.make_train_step(self.task, self.tx, self.lr_schedule, self.config.seed),
        shardings, self.batch_sharding, self.replicated)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
             for k, v in batch_shapes.items()}
    compiled = jitted.lower(abstract, batch).compile()
    return compiled, flops_lib.compiled_flops(compiled, self.mesh.size)


@dataclasses.dataclass
class InitCheckpoint:
  checkpointer: ckpt_lib.Checkpointer
  step: int


def open_init_checkpoint(config: ml_collections.ConfigDict) -> InitCheckpoint | None:
  """The pretraining checkpoint a classification run starts from, checked
  against the config's backbone before anything compiles (None: random init).

  Raises ConfigError when config.init names no usable checkpoint or one of
  another method or network; CheckpointError when it is unreadable.
  """
  if not tasks.is_classification(config):
    return None
  workdir, step = config.init.workdir, config.init.step
  if workdir is None:
    logging.warning('config.init.workdir is None: the backbone is randomly initialised '
                    '(a baseline); pass --config.init.workdir=<pretraining workdir>')
    return None
  where = f'config.init.workdir={workdir!r}'
  if not epath.Path(workdir).is_dir():
    raise ConfigError(f'{where} does not exist: it must be the --workdir of a '
                      'pretraining run')
  if not epath.Path(workdir, 'checkpoints').is_dir():
    raise ConfigError(f'{where} has no checkpoints/ directory: it must be the '
                      '--workdir of a pretraining run')
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=None, read_only=True)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise ConfigError(f'{where} has no complete checkpoint yet')
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise ConfigError(f'config.init.step={step} is not a checkpoint in {workdir}; '
                        f'available: {sorted(steps)}')
    saved = checkpointer.restore_meta(step)['config']
    want = json.loads(to_json(config.backbone))
    source = f'checkpoint {step} in {checkpointer.directory}'
    if saved.get('objective') != want['objective']:
      raise ConfigError(
          f'{source} was written by objective {saved.get("objective")!r}, but '
          f'config.backbone.objective={want["objective"]!r}: use the {saved.get("objective")} '
          'variant of this config, or the workdir of a ' + want['objective'] + ' pretraining run')
    flat_saved, flat_want = flatten(saved), flatten(want)
    mismatch = tasks.architecture_mismatch(flat_saved, flat_want)
    if mismatch:
      shown = ', '.join(f'{k} (checkpoint: {flat_saved.get(k, "<missing>")!r}, '
                        f'config.backbone: {flat_want.get(k, "<missing>")!r})'
                        for k in mismatch[:5])
      fix = ' '.join(f'--config.backbone.{k}={flat_saved[k]}' for k in mismatch[:5]
                     if k in flat_saved)
      raise ConfigError(
          f'{source} holds a different network than config.backbone: {shown}. Pass the '
          f'pretraining values, e.g. {fix}')
  except BaseException:  # a refused init checkpoint: release orbax's threads
    checkpointer.close()
    raise
  return InitCheckpoint(checkpointer, step)


def initial_state(trainer: Trainer, abstract: Any, init_from: InitCheckpoint | None) -> Any:
  """A new run's state: initialised, with the backbone of a classification
  run (and its non-gradient state, when the method keeps it for evaluation)
  restored from its pretraining checkpoint (when `init_from` names one)."""
  state = trainer.init_state(abstract)
  if init_from is not None:
    backbone = init_from.checkpointer.restore_subtree(
        init_from.step, ('params', 'model'), abstract.params['backbone'])
    state = state.replace(params=dict(state.params, backbone=backbone))
    if jax.tree.leaves(abstract.method_state):
      state = state.replace(method_state=init_from.checkpointer.restore_subtree(
          init_from.step, ('method_state',), abstract.method_state))
    logging.info('backbone initialised from checkpoint %d in %s', init_from.step,
                 init_from.checkpointer.directory)
  return state


def fit_whitening(config, task, evaluator: Evaluator, state: Any) -> Any:
  """`state` with the head's whitening fitted to the starting backbone's
  features of the first `classifier.whiten_examples` images of data.split
  outside its held-out part (eval-mode views; labels unused, so a label fraction sees
  the same statistics)."""
  c = config.classifier
  split = open_split(config, config.data.split)
  held = evaluator.val.ids if evaluator.val is not None else ()
  ids = splits.remaining_ids(split.num_examples, held)[:c.whiten_examples]
  source = pipeline.SubsetSource(split, ids, f'first {len(ids)} not held out')
  start = time.perf_counter()
  features, _ = evaluator.features(state.params, source, c.representation,
                                   state=state.method_state)
  logging.info('whitening fitted to %s features of %s (%.1f s)', features.shape, source.name,
               time.perf_counter() - start)
  return state.replace(params=task.with_whitening(state.params, features))


@dataclasses.dataclass
class Run:
  """Everything a run is made of, before anything compiles."""
  config: ml_collections.ConfigDict
  source: pipeline.Source | None
  trainer: Trainer
  evaluator: Evaluator | None
  init_from: InitCheckpoint | None

  @property
  def task(self):
    return self.trainer.task

  @property
  def method(self):
    return self.trainer.task.method

  def new_state(self, abstract: Any | None = None, *, whiten: bool = True) -> Any:
    """A fresh run's initial state (initialised, the backbone restored, the
    head's whitening fitted unless whiten=False), in its shardings;
    closes the init checkpoint."""
    abstract = self.trainer.abstract_state() if abstract is None else abstract
    state = initial_state(self.trainer, abstract, self.init_from)
    if whiten and tasks.is_classification(self.config) and self.config.classifier.whiten:
      state = fit_whitening(self.config, self.task, self.evaluator, state)
    self.close()
    return state

  def close(self) -> None:
    if self.init_from is not None:
      self.init_from.checkpointer.close()
      self.init_from = None


def assemble(config: ml_collections.ConfigDict, *, devices=None, data: bool = True,
             restored: bool = False) -> Run:
  """Validates `config`, then builds its source (generating the built-in
  dataset if needed), runs the method's `prepare`, and builds the task,
  trainer, evaluator and init checkpoint. Raises ConfigError, DataError or
  CheckpointError, each with one line, before anything compiles.

  data=False (benchmarks on random batches): no source, evaluator or init
  checkpoint, and no labels (so no classifier or online probe).
  restored=True (a finished run whose parameters come from its own
  checkpoint: pictures, the sampler): no `prepare` and no init checkpoint."""
  num_devices = len(devices) if devices is not None else jax.device_count()
  validation.validate(config, num_devices, jax.process_count())  # before any I/O
  if not data:
    return Run(config, None, Trainer(config, devices), None, None)
  source = build_source(config)
  if not restored:
    prepare_method(config)
  trainer = Trainer(config, devices, num_classes=source.num_classes)
  init_from = None if restored else open_init_checkpoint(config)
  evaluator = Evaluator(config, trainer.task, trainer.mesh, source.num_classes,
                        held_out=source.held_out)
  return Run(config, source, trainer, evaluator, init_from)
