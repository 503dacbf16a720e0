"""The loop: mesh, data, state, step, checkpoints, metrics.

It knows nothing about any paper: the objective (ssl_jax.objectives) gives
init / loss / represent, and everything else is generic. A run is a pure
function of its config: the step's key is fold_in(seed, step) and the data
stream is a function of (seed, global example index), both restored from a
checkpoint, so a resumed run computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import logging as pylogging
import os
import signal
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, metrics as metrics_lib, optim, pictures, tasks
from ssl_jax import palette as palette_lib
from ssl_jax import sharding as sharding_lib
from ssl_jax import step as step_lib
from ssl_jax.data import pipeline
from ssl_jax.evaluate.evaluator import Evaluator, open_split


DataError = pipeline.DataError  # the dataset cannot be opened


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN or Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
  """What `run` leaves behind, for callers and tests."""
  workdir: str
  first_step: int        # the step this invocation started from
  last_step: int         # the step it stopped at
  preempted: bool
  state: Any = None
  evaluation: dict[str, float] | None = None  # the latest evaluation's results


class _Preemption:
  """Turns SIGTERM (how a TPU VM is preempted) into a flag the loop polls."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      del frame
      logging.warning('signal %d received: saving a checkpoint, then exiting', signum)
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. some notebooks): no handler
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _LibraryInfoFilter(pylogging.Filter):
  """Drops INFO records that libraries (orbax, clu, tensorflow) send through
  absl, so the console shows the run's own progress; warnings pass."""

  _QUIET = (f'{os.sep}orbax{os.sep}', f'{os.sep}clu{os.sep}',
            f'{os.sep}tensorflow{os.sep}', f'{os.sep}tensorflow_datasets{os.sep}',
            f'{os.sep}etils{os.sep}', f'{os.sep}jax{os.sep}')

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or not any(
        q in record.pathname for q in self._QUIET)


def quiet_library_logs() -> None:
  """Installs the filter above on absl's logger (idempotent)."""
  absl_logger = pylogging.getLogger('absl')
  if not any(isinstance(f, _LibraryInfoFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_LibraryInfoFilter())


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def dtype_of(config) -> Any:
  return jnp.bfloat16 if config.compute_dtype == 'bfloat16' else jnp.float32


def build_source(config: ml_collections.ConfigDict):
  """Opens config.data; a dataset that cannot be used raises DataError.

  With several processes, process 0 opens it first (generating the built-in
  dataset into a shared data_dir if needed) and the others wait for it.
  """
  def open_source():
    try:
      return pipeline.make_source(config.data.name, data_dir=config.data.data_dir,
                                  split=config.data.split,
                                  label_fraction=config.data.get('label_fraction', 1.0),
                                  subset_seed=config.data.get('subset_seed', 0))
    except DataError as e:
      raise DataError(f'config.data.name={config.data.name!r}: {e}') from e

  if jax.process_count() == 1:
    return open_source()
  source = open_source() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('ssl_jax: dataset ready')
  return source if source is not None else open_source()


def prepare_palette(config: ml_collections.ConfigDict) -> None:
  """iGPT pretraining: fits the palette when its file is missing and
  igpt.palette.fit_if_missing is set (process 0; the others wait). Loading
  it, and every error about it, happens when the objective is built."""
  if config.objective != 'igpt':
    return
  path = palette_lib.resolve_path(config)
  if jax.process_index() == 0 and config.igpt.palette.fit_if_missing and not epath.Path(
      path).exists():
    t0 = time.perf_counter()
    logging.info('palette %s is missing: fitting k-means (k=%d) on %d images of %s',
                 path, config.igpt.vocab_size, config.igpt.palette.fit_images,
                 config.data.name)
    palette_lib.fit_for_config(config, path)
    logging.info('wrote palette %s (%.1f s)', path, time.perf_counter() - t0)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('ssl_jax: palette ready')


def global_batches(config, source, mesh, start_step: int) -> Iterator[dict[str, jax.Array]]:
  """The training stream from `start_step` on, as global sharded jax.Arrays."""
  ds = pipeline.make_dataset(
      source, seed=config.seed, global_batch_size=config.batch_size,
      start_step=start_step, image_size=config.data.image_size, train=True,
      process_index=jax.process_index(), process_count=jax.process_count(),
      min_area=config.data.min_area, flip=config.data.flip,
      randaugment=tuple(config.data.get('randaugment', ())) or None,
      crop=config.data.get('crop', 'resized'), pad=config.data.get('pad', 4))
  sharding = sharding_lib.batch_sharding(mesh)
  for local in ds.as_numpy_iterator():
    yield sharding_lib.to_global(local, sharding)


def abstract_batch(config) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of one global training batch."""
  b, s = config.batch_size, config.data.image_size
  return {'image': jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
          'label': jax.ShapeDtypeStruct((b,), jnp.int32),
          'valid': jax.ShapeDtypeStruct((b,), jnp.bool_)}


class Trainer:
  """Everything a run needs, built once from the config (no compilation).

  `num_classes`: labels of the training data (None: unlabelled), for the
  classifier of a classification run and the online probe of pretraining.
  """

  def __init__(self, config: ml_collections.ConfigDict, devices=None,
               num_classes: int | None = None):
    num_devices = len(devices) if devices is not None else jax.device_count()
    config_lib.validate(config, num_devices, jax.process_count())
    if tasks.is_classification(config) and not num_classes:
      raise DataError(f'config.data.name={config.data.name!r} (split {config.data.split!r}) '
                      'has no labels: a classification run needs a labelled dataset')
    self.config = config
    self.mesh = sharding_lib.make_mesh(config.sharding.fsdp_axis_size, devices)
    self.task = tasks.build(config, num_classes, dtype_of(config))
    config_lib.validate_representations(config, self.task.representations())
    decay = getattr(self.task, 'layer_decay', 1.0) != 1.0
    self.tx = optim.make_optimizer(config, self.task.param_labels,
                                   lr_scales=self.task.lr_scales if decay else None)
    self.lr_schedule = optim.schedule(config)
    self.batch_sharding = sharding_lib.batch_sharding(mesh=self.mesh)
    self.replicated = sharding_lib.replicated(self.mesh)

  def _init_fn(self):
    one = {'image': jnp.zeros((1, self.config.data.image_size,
                               self.config.data.image_size, 3), jnp.float32)}
    return lambda: step_lib.init_state(self.task, self.tx, self.config.seed, one)

  def abstract_state(self) -> Any:
    """The state's shapes, dtypes and shardings, without computing it."""
    shapes = jax.eval_shape(self._init_fn())
    shardings = sharding_lib.state_shardings(
        shapes, self.mesh, self.config.sharding.rule, self.config.sharding.fsdp_min_size)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)

  def init_state(self, abstract) -> Any:
    """The initial state, created directly in its shardings."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    return jax.jit(self._init_fn(), out_shardings=shardings)()

  def compile_step(self, abstract, batch_shapes):
    """The compiled train step and its FLOPs per step (from XLA's cost analysis)."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    jitted = step_lib.jit_train_step(
        step_lib.make_train_step(self.task, self.tx, self.lr_schedule, self.config.seed),
        shardings, self.batch_sharding, self.replicated)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
             for k, v in batch_shapes.items()}
    compiled = jitted.lower(abstract, batch).compile()
    return compiled, step_flops(compiled, self.mesh.size)


def step_flops(compiled, num_devices: int) -> float | None:
  """Model FLOPs of one step for all devices, from the compiled computation."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  # XLA reports the cost of the per-device (SPMD-partitioned) program.
  return float(flops) * num_devices if flops else None


def _meta(config, step: int) -> dict[str, Any]:
  return {'step': step,
          'config': json.loads(config_lib.to_json(config)),
          'data': {'next_index': step * config.batch_size, 'seed': config.seed,
                   'batch_size': config.batch_size}}


def _check_compatible(config, meta: dict[str, Any], directory: str, step: int) -> None:
  saved = meta.get('config', {})
  current = json.loads(config_lib.to_json(config))
  bad = config_lib.incompatible_keys(saved, current)
  if bad:
    shown = ', '.join(f'{k} (checkpoint: {config_lib.flatten(saved).get(k, "<missing>")!r}, '
                      f'now: {config_lib.flatten(current).get(k, "<missing>")!r})'
                      for k in bad[:5])
    more = f' and {len(bad) - 5} more' if len(bad) > 5 else ''
    raise ckpt_lib.CheckpointError(
        f'checkpoint {step} in {directory} was written by an incompatible config: '
        f'{shown}{more}. Resume with the same values, or use a new --workdir.')
  if meta['data']['next_index'] != step * config.batch_size:
    raise ckpt_lib.CheckpointError(
        f'checkpoint {step} in {directory}: data position {meta["data"]["next_index"]} '
        f'does not match step {step} x batch {config.batch_size}')


@dataclasses.dataclass
class _InitCheckpoint:
  checkpointer: ckpt_lib.Checkpointer
  step: int


def open_init_checkpoint(config: ml_collections.ConfigDict) -> _InitCheckpoint | None:
  """The pretraining checkpoint a classification run starts from, checked
  against the config's backbone before anything compiles (None: random init).

  Raises ConfigError when config.init names no usable checkpoint or one of
  another objective or network; CheckpointError when it is unreadable.
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
    raise config_lib.ConfigError(f'{where} does not exist: it must be the --workdir of a '
                                 'pretraining run')
  if not epath.Path(workdir, 'checkpoints').is_dir():
    raise config_lib.ConfigError(f'{where} has no checkpoints/ directory: it must be the '
                                 '--workdir of a pretraining run')
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=None, read_only=True)
  steps = checkpointer.all_steps()
  if not steps:
    raise config_lib.ConfigError(f'{where} has no complete checkpoint yet')
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise config_lib.ConfigError(f'config.init.step={step} is not a checkpoint in {workdir}; '
                                 f'available: {sorted(steps)}')
  saved = checkpointer.restore_meta(step)['config']
  want = json.loads(config_lib.to_json(config.backbone))
  source = f'checkpoint {step} in {checkpointer.directory}'
  if saved.get('objective') != want['objective']:
    raise config_lib.ConfigError(
        f'{source} was written by objective {saved.get("objective")!r}, but '
        f'config.backbone.objective={want["objective"]!r}: use the {saved.get("objective")} '
        'variant of this config, or the workdir of a ' + want['objective'] + ' pretraining run')
  flat_saved, flat_want = config_lib.flatten(saved), config_lib.flatten(want)
  mismatch = tasks.architecture_mismatch(flat_saved, flat_want)
  if mismatch:
    shown = ', '.join(f'{k} (checkpoint: {flat_saved.get(k, "<missing>")!r}, '
                      f'config.backbone: {flat_want.get(k, "<missing>")!r})'
                      for k in mismatch[:5])
    fix = ' '.join(f'--config.backbone.{k}={flat_saved[k]}' for k in mismatch[:5]
                   if k in flat_saved)
    raise config_lib.ConfigError(
        f'{source} holds a different network than config.backbone: {shown}. Pass the '
        f'pretraining values, e.g. {fix}')
  return _InitCheckpoint(checkpointer, step)


def initial_state(trainer: Trainer, abstract: Any, init_from: _InitCheckpoint | None) -> Any:
  """A new run's state: initialised, with the backbone of a classification
  run restored from its pretraining checkpoint (when `init_from` names one)."""
  state = trainer.init_state(abstract)
  if init_from is not None:
    backbone = init_from.checkpointer.restore_subtree(
        init_from.step, ('params', 'model'), abstract.params['backbone'])
    state = state.replace(params=dict(state.params, backbone=backbone))
    logging.info('backbone initialised from checkpoint %d in %s', init_from.step,
                 init_from.checkpointer.directory)
  return state


def _fit_whitening(config, task, evaluator: Evaluator, params: Any) -> Any:
  """A linear probe's head with its whitening fitted to the frozen features
  of the first `classifier.whiten_examples` training images (eval-mode
  views; labels unused, so a label fraction sees the same statistics)."""
  c = config.classifier
  split = open_split(config, config.data.split)
  n = min(c.whiten_examples, split.num_examples)
  source = pipeline.SubsetSource(split, np.arange(n), f':{n}')
  start = time.perf_counter()
  features, _ = evaluator.features(params, source, c.representation)
  logging.info('whitening fitted to %s features of %s (%.1f s)', features.shape, source.name,
               time.perf_counter() - start)
  return task.with_whitening(params, features)


def run(config: ml_collections.ConfigDict, workdir: str, *, devices=None,
        stop_after: int | None = None) -> RunResult:
  """Trains from scratch or resumes from the latest checkpoint in `workdir`.

  `stop_after`: return after this many steps of this invocation (tests).
  """
  num_devices = len(devices) if devices is not None else jax.device_count()
  config_lib.validate(config, num_devices, jax.process_count())  # before any I/O
  source = build_source(config)
  prepare_palette(config)
  trainer = Trainer(config, devices, num_classes=source.num_classes)
  init_from = open_init_checkpoint(config)
  evaluator = Evaluator(config, trainer.task, trainer.mesh, source.num_classes)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep)
  abstract = trainer.abstract_state()

  start = checkpointer.latest_step()
  if start is not None:
    meta = checkpointer.restore_meta(start)
    _check_compatible(config, meta, checkpointer.directory, start)
    if meta['config'].get('total_steps') != config.total_steps:
      logging.warning('total_steps changed from %s to %s: the learning-rate '
                      'schedule after step %d differs from the original run',
                      meta['config'].get('total_steps'), config.total_steps, start)
    state = checkpointer.restore_state(start, abstract)
    logging.info('resumed from checkpoint %d in %s', start, checkpointer.directory)
  else:
    start = 0
    state = initial_state(trainer, abstract, init_from)
    if getattr(trainer.task, 'whiten', False):
      state = state.replace(params=_fit_whitening(config, trainer.task, evaluator, state.params))
  if init_from is not None:
    init_from.checkpointer.close()
  if jax.process_index() == 0:
    metrics_lib.write_atomic(os.path.join(workdir, 'config.json'),
                             json.dumps(json.loads(config_lib.to_json(config)), indent=2))

  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  logging.info('%s: %.2fM parameters, mesh %s', config.objective, num_params / 1e6,
               dict(trainer.mesh.shape))
  compiled, flops = trainer.compile_step(abstract, abstract_batch(config))
  writer = metrics_lib.make_writer(workdir, resume_step=start)
  results = metrics_lib.EvalResults(workdir, resume_step=start)
  if start == 0:
    writer.write_hparams({'num_params': num_params})

  result = RunResult(workdir, start, start, preempted=False)
  batches = global_batches(config, source, trainer.mesh, start)
  total = config.total_steps
  pending = None  # (step number, metrics) of the last dispatched step, unchecked
  last_log_time, last_log_step = time.perf_counter(), start

  def check(item) -> dict[str, float]:
    step, metrics = item
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not (np.isfinite(host['loss']) and np.isfinite(host['grad_norm'])):
      raise NonFiniteLossError(
          f'non-finite loss {host["loss"]} (grad norm {host["grad_norm"]}) at step '
          f'{step}; the last good checkpoint in {checkpointer.directory} is intact. '
          'Try a lower optimizer.lr, optimizer.grad_clip_norm, or float32 compute.')
    return host

  def should_log(step: int) -> bool:
    return step % config.log_every == 0 or step in (1, total)

  def should_eval(step: int) -> bool:
    every = config.eval.every
    return evaluator.enabled and ((every and step % every == 0) or step == total)

  def evaluate(step: int):
    t0 = time.perf_counter()
    scores = evaluator(state.params)
    writer.write_scalars(step, scores)
    writer.flush()
    results.add(step, scores)
    logging.info('eval at step %d (%.1f s): %s', step, time.perf_counter() - t0,
                 ' | '.join(f'{k} {v:.4f}' for k, v in scores.items()))
    drawn = evaluator.pictures(state.params)
    if drawn is not None:
      writer.write_images(step, {'pictures': drawn})
      writer.flush()
      if jax.process_index() == 0:
        pictures.save_png(pictures.png_path(workdir, step), drawn)

  def log(step: int, host: dict[str, float], flush: bool = True):
    nonlocal last_log_time, last_log_step
    now = time.perf_counter()
    dt = (now - last_log_time) / max(step - last_log_step, 1)
    last_log_time, last_log_step = now, step
    scalars = dict(host, step_time=dt, examples_per_sec=config.batch_size / dt)
    if flops:
      scalars['tflops_per_sec'] = flops / dt / 1e12
    writer.write_scalars(step, scalars)
    if flush:  # metrics.jsonl and TensorBoard are current at every log
      writer.flush()
    logging.info('step %d/%d | loss %.4f | lr %.2e | %.1f ex/s | %.0f ms/step | ETA %s',
                 step, total, host['loss'], host['learning_rate'],
                 config.batch_size / dt, dt * 1e3, _format_eta(dt * (total - step)))

  try:
    with _Preemption() as preemption:
      for step in range(start + 1, total + 1):
        state, metrics = compiled(state, next(batches))
        previous, pending = pending, (step, metrics)
        if previous is not None:
          host = check(previous)
          if should_log(previous[0]):
            log(previous[0], host)
        evaluating = should_eval(step)
        at_checkpoint = step % config.checkpoint.every == 0 or step == total
        stopping = (preemption.requested or checkpointer.reached_preemption(step)
                    or (stop_after is not None and step - start >= stop_after))
        if evaluating or at_checkpoint or stopping:
          host = check(pending)
          if should_log(step):  # an evaluation adds to this step's line
            log(step, host, flush=not evaluating)
          pending = None
        if evaluating:  # before the checkpoint: a checkpoint's step is evaluated
          evaluate(step)
        if at_checkpoint or stopping:
          checkpointer.save(step, state, _meta(config, step))
        result.last_step = step
        if stopping:
          result.preempted = preemption.requested
          break
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  result.state = state
  result.evaluation = results.latest()
  if result.preempted:
    logging.warning('stopped at step %d on a preemption signal; the checkpoint is '
                    'saved: run the same command again to resume', result.last_step)
  if jax.process_index() == 0:
    logging.info('done at step %d. metrics: %s (TensorBoard: tensorboard --logdir %s); '
                 'checkpoints: %s', result.last_step, os.path.join(workdir, 'metrics.jsonl'),
                 workdir, checkpointer.directory)
  return result
