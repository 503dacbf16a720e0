"""The loop: data, state, step, evaluation, checkpoints, metrics.

It knows nothing about any paper: the run's pieces come from
`ssl_jax.core.assembly.assemble`, the method behind the task gives init /
loss / represent, and everything else is generic. A run is a pure
function of its config: the step's key is fold_in(seed, step) and the data
stream is a function of (seed, global example index), both restored from a
checkpoint, so a resumed run computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from ssl_jax import drawing, peers, tasks
from ssl_jax.config.checks import differences, flatten, incompatible_keys, to_json
from ssl_jax.core import assembly, validation
from ssl_jax.core import checkpoint as ckpt_lib
from ssl_jax.core import flops as flops_lib
from ssl_jax.core import metrics as metrics_lib
from ssl_jax.core import provenance as provenance_lib
from ssl_jax.core import workdir as workdir_lib

DataError = assembly.DataError  # the dataset cannot be opened


class Preempted(Exception):
  """A run stopped by a preemption after saving its checkpoint (a sweep
  raises it; `run` returns RunResult.preempted)."""

  def __init__(self, step: int | None, where: str = ''):
    at = f'at step {step}' if step is not None else where
    super().__init__(f'preempted {at}, resume with the same command')
    self.step = step


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


class Preemption:
  """Turns SIGTERM (how a TPU VM is preempted) into a stop that every
  process of the run agrees on: `stop_here(step)` in the training loop
  (the same step on all, ssl_jax.peers.StopStep), `anywhere()` between the
  runs of a sweep or of seeds. `requested` is this process's own signal.

  JAX's preemption service (multihost_utils.reached_preemption_sync_point)
  is not what agrees: it hears SIGTERM only where no Python handler is
  installed, and a notice that arrives before the first step of a resumed
  run (while it compiles) sets a sync point that the run's step numbers
  never meet (measured: no stop), so that run would be killed without its
  checkpoint."""

  _open: list['Preemption'] = []  # the contexts entered, innermost last

  def __init__(self):
    self.requested = False
    self._previous = None
    self._stop = None

  def stop_here(self, step: int) -> bool:
    """Whether to save and stop after `step` (every process alike)."""
    return self._stop.reached(step, self.requested)

  def anywhere(self) -> bool:
    """Whether any process got the signal (every process calls it alike)."""
    return peers.any_process('preempted', self.requested)

  def __enter__(self):
    def handler(signum, frame):
      del frame
      logging.warning('signal %d received: saving a checkpoint, then exiting', signum)
      self.requested = True
    self._stop = peers.StopStep()
    Preemption._open.append(self)
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. some notebooks): no handler
      self._previous = None
    return self

  def __exit__(self, *exc):
    Preemption._open.remove(self)
    if self.requested and Preemption._open:  # a sweep's or seeds' own context hears it too
      Preemption._open[-1].requested = True
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def nonfinite_message(config, step: int, host: dict[str, float], last_checkpoint: int | None,
                      directory: str) -> str:
  """The NaN / Inf stop: what happened, which checkpoint is left (or that
  there is none), and only the remedies that apply to this config."""
  kept = (f'the last checkpoint, step {last_checkpoint}, in {directory} is intact (the same '
          'command resumes from it)' if last_checkpoint is not None else
          f'no checkpoint was written yet (the first is due at step {config.checkpoint.every})')
  remedies = ['a lower optimizer.lr']
  if not config.optimizer.grad_clip_norm:
    remedies.append('gradient clipping (optimizer.grad_clip_norm, e.g. 1.0)')
  if config.compute_dtype == 'bfloat16':
    remedies.append("compute_dtype='float32'")
  return (f'non-finite loss {host["loss"]} (grad norm {host["grad_norm"]}) at step {step}; '
          f'{kept}. Try ' + ', or '.join(remedies) + '.')


def _meta(config, step: int) -> dict[str, Any]:
  return {'step': step,
          'config': json.loads(to_json(config)),
          'data': {'next_index': step * validation.images_per_step(config), 'seed': config.seed,
                   'batch_size': config.batch_size}}


def augmentation_summary(config) -> str:
  """The training images' augmentation, with the keys that turn each part
  off (flips and crops assume natural images), for a classification run;
  '' for pretraining (each method declares its own views)."""
  if config.objective != validation.CLASSIFICATION:
    return ''
  d, c = config.data, config.classifier
  if d.get('crop', 'resized') == 'pad':
    parts = [f'whole image, reflection-padded by {d.pad} px and randomly cropped back '
             '(data.crop)']
  elif d.min_area < 1.0:
    parts = [f'random resized crop of area [{d.min_area:g}, 1] (data.min_area=1.0: whole '
             'images)']
  else:
    parts = ['whole images']
  parts.append('random horizontal flip (data.flip=false: none)' if d.flip else 'no flip')
  if tuple(d.get('randaugment', ())):
    n, m, std = d.randaugment
    parts.append(f'RandAugment {n} ops, magnitude {m:g} +- {std:g} (data.randaugment=())')
  for key in ('mixup', 'cutmix', 'label_smoothing', 'mask_ratio'):
    if c.get(key, 0.0):
      parts.append(f'{key} {c[key]:g} (classifier.{key}=0)')
  return '; '.join(parts)


def _write_config(workdir: str, config, made_by: dict[str, Any]) -> None:
  """config.json: the config, and under "provenance" what produced each
  invocation of the run (earlier ones kept, each with its start step)."""
  path = epath.Path(workdir, 'config.json')
  earlier = []
  if path.exists():
    try:
      earlier = [p for p in json.loads(path.read_text()).get('provenance', [])
                 if p.get('start_step', 0) < made_by['start_step']]
    except (ValueError, AttributeError):  # damaged, or not a dict: start afresh
      earlier = []
  saved = dict(json.loads(to_json(config)), provenance=earlier + [made_by])
  metrics_lib.write_atomic(os.fspath(path), json.dumps(saved, indent=2))


def _check_compatible(config, meta: dict[str, Any], directory: str, step: int) -> None:
  saved = meta.get('config', {})
  current = json.loads(to_json(config))
  bad = incompatible_keys(saved, current, tasks.added_keys(config))
  if bad:
    shown = differences(flatten(saved), flatten(current), bad, 'checkpoint', 'now')
    raise ckpt_lib.CheckpointError(
        f'checkpoint {step} in {directory} was written by an incompatible config: '
        f'{shown}. Resume with the same values, or use a new --workdir.')
  images = validation.images_per_step(config)
  if meta['data']['next_index'] != step * images:
    raise ckpt_lib.CheckpointError(
        f'checkpoint {step} in {directory}: data position {meta["data"]["next_index"]} '
        f'does not match step {step} x {images} images per step')


def run(config: ml_collections.ConfigDict, workdir: str, *, devices=None,
        stop_after: int | None = None, report: bool = True) -> RunResult:
  """Trains from scratch or resumes from the latest checkpoint in `workdir`.

  `stop_after`: return after this many steps of this invocation (tests).
  `report=False` (a sweep's points): a classification run ends without
  reading eval.split; `report(config, workdir)` reads it later, for the
  point the sweep chose.
  """
  # A bad config fails before the workdir is touched; a held workdir is
  # refused before the dataset is opened or anything is written.
  validation.validate(config, len(devices) if devices is not None else jax.device_count(),
                      jax.process_count())
  # SIGTERM from here on (opening data, compiling) stops at the first step.
  with Preemption() as preemption, workdir_lib.hold(workdir) as lease:
    run_ = assembly.assemble(config, devices=devices)
    try:
      return _run(config, workdir, run_, lease, preemption, stop_after, report)
    finally:
      run_.close()


def run_to_end(config: ml_collections.ConfigDict, workdir: str, *,
               report: bool = True) -> dict[str, Any]:
  """The final evaluation of the run in `workdir`: read back from its
  eval.json when it has finished, else trained (or resumed) now. Raises
  Preempted when the run stops before its end (a sweep's or a seed's run)."""
  final = metrics_lib.final_evaluation(workdir, config.total_steps)
  if final is not None:
    return final
  result = run(config, workdir, report=report)
  if result.preempted:
    raise Preempted(result.last_step)
  return result.evaluation or {}


SELECT = 'val/top1'  # what early stopping and a sweep choose by (held-out part)
SELECTED = 'selected_val/top1'  # the final record's SELECT of the selected step


def _kept(state) -> dict[str, Any]:
  """What WORKDIR/best/ keeps of a state: the parameters and the method's
  non-gradient state (no optimizer moments)."""
  return {'params': state.params, 'method_state': state.method_state}


def selects_best(config) -> bool:
  """Whether the run reports its best held-out evaluation's parameters
  (eval.select='best': early stopping) rather than its last ones."""
  return (config.objective == validation.CLASSIFICATION
          and config.eval.get('select', 'last') == 'best')


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The evaluation with the highest held-out top-1 (the earliest of ties)."""
  scored = [r for r in records if SELECT in r]
  return max(scored, key=lambda r: (r[SELECT], -r['step'])) if scored else None


def report(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Reads eval.split once for a finished classification run trained with
  report=False: the parameters it selected (its last step, or with
  eval.select='best' its best held-out evaluation) are scored, and the
  `eval/...` numbers join its final record in eval.json / eval.md. Returns
  that record (unchanged if it already holds them)."""
  validation.validate(config, jax.device_count(), jax.process_count())
  final = metrics_lib.final_evaluation(workdir, config.total_steps)
  if final is None:
    raise ValueError(f'{workdir} has not finished its {config.total_steps} steps')
  if 'eval/top1' in final:
    return final
  with workdir_lib.hold(workdir):
    run_ = assembly.assemble(config, restored=True)
    try:
      abstract = run_.trainer.abstract_state()
      step = int(final.get('selected_step', config.total_steps))
      best = step != config.total_steps
      with ckpt_lib.Checkpointer(workdir, keep=None, read_only=True,
                                 subdir='best' if best else 'checkpoints') as checkpointer:
        kept = checkpointer.restore_state(step, _kept(abstract) if best else abstract)
      params, method_state = ((kept['params'], kept['method_state']) if best else
                              (kept.params, kept.method_state))
      scores = run_.evaluator.report(params, method_state)
    finally:
      run_.close()
    made_by = dict(provenance_lib.record(), start_step=config.total_steps)
    results = metrics_lib.EvalResults(workdir, resume_step=config.total_steps,
                                      provenance=made_by,
                                      augmentation=augmentation_summary(config))
    record = dict({k: v for k, v in final.items() if k != 'step'}, **scores)
    results.add(config.total_steps, record)
  logging.info('%s: reported on %s (parameters of step %d): %s', workdir, config.eval.split,
               step, ' | '.join(f'{k} {v:.4f}' for k, v in scores.items()))
  return results.latest()


def _run(config, workdir: str, run_: assembly.Run, lease, preemption: 'Preemption',
         stop_after: int | None, report_at_end: bool = True) -> RunResult:
  """`run` while holding the workdir."""
  trainer, evaluator = run_.trainer, run_.evaluator
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.checkpoint.keep,
                                       keep_period=config.checkpoint.keep_period)
  # Early stopping keeps the best held-out evaluation's state apart.
  best_keeper = (ckpt_lib.Checkpointer(workdir, keep=None, subdir='best')
                 if selects_best(config) else contextlib.nullcontext())
  with checkpointer, best_keeper:  # closed however this ends (a refused resume included)
    abstract = trainer.abstract_state()

    start = checkpointer.latest_step()
    if start is not None:
      run_.close()
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
      state = run_.new_state(abstract)
    made_by = dict(provenance_lib.record(), start_step=start)
    if jax.process_index() == 0:
      _write_config(workdir, config, made_by)

    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    logging.info('%s: %.2fM parameters, mesh %s', config.objective, num_params / 1e6,
                 dict(trainer.mesh.shape))
    compiled, hardware_flops = trainer.compile_step(abstract, assembly.abstract_batch(config))
    try:
      model_flops = trainer.model_flops()
    except Exception as e:  # noqa: BLE001 (a diagnostic: never the reason a run fails)
      logging.warning('model FLOPs not counted (%s: %s): no MFU in this run\'s logs',
                      type(e).__name__, e)
      model_flops = None
    peak, peak_source = flops_lib.peak_flops(list(trainer.mesh.devices.flat),
                                             config.compute_dtype)
    logging.info(flops_lib.describe(model_flops, hardware_flops, peak, peak_source))
    hardware_flops = flops_lib.hardware_count(model_flops, hardware_flops)
    writer = metrics_lib.make_writer(workdir, resume_step=start)
    results = metrics_lib.EvalResults(workdir, resume_step=start, provenance=made_by,
                                      augmentation=augmentation_summary(config))
    if start == 0:
      writer.write_hparams({'num_params': num_params,
                            **({'model_flops_per_step': model_flops} if model_flops else {}),
                            **({'hardware_flops_per_step': hardware_flops}
                               if hardware_flops else {})})

    if selects_best(config):
      # Those of an interrupted run's later steps are recomputed identically.
      best_keeper.prune({s for s in best_keeper.all_steps() if s <= start})
      # Only evaluations whose state is kept can be chosen (eval.select may
      # have been switched to 'best' on resume, or a save cut short).
      saved = set(best_keeper.all_steps())
      best = best_record([r for r in results.records if r['step'] in saved])
    else:
      best = None

    result = RunResult(workdir, start, start, preempted=False)
    batches = assembly.global_batches(config, run_.source, trainer.mesh, start)
    total = config.total_steps
    pending = None  # (step number, metrics) of the last dispatched step, unchecked
    last_checkpoint = start or None  # the newest checkpoint of this run, if any
    last_log_time, last_log_step = time.perf_counter(), start

    def check(item) -> dict[str, float]:
      step, metrics = item
      host = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not (np.isfinite(host['loss']) and np.isfinite(host['grad_norm'])):
        raise NonFiniteLossError(nonfinite_message(config, step, host, last_checkpoint,
                                                   checkpointer.directory))
      return host

    def should_log(step: int) -> bool:
      return step % config.log_every == 0 or step in (1, total)

    def should_eval(step: int) -> bool:
      every = config.eval.every
      return evaluator.enabled and ((every and step % every == 0) or step == total)

    def evaluate(step: int):
      nonlocal best
      t0 = time.perf_counter()
      scores = evaluator.select(state.params, state.method_state)
      if selects_best(config) and SELECT in scores and (
          best is None or scores[SELECT] > best[SELECT]):
        best = {'step': step, **scores}
        if step < total:  # the last step's state is the regular checkpoint
          keep_best(step)
      if step == total and config.objective == validation.CLASSIFICATION:
        chosen = best['step'] if selects_best(config) and best is not None else step
        scores['selected_step'] = chosen
        if SELECT in scores:  # what a sweep over such runs chooses by
          scores[SELECTED] = best[SELECT] if chosen != step else scores[SELECT]
        if report_at_end:
          scores.update(evaluator.report(*chosen_state(chosen)))
      writer.write_scalars(step, scores)
      writer.flush()
      results.add(step, scores)
      logging.info('eval at step %d (%.1f s): %s', step, time.perf_counter() - t0,
                   ' | '.join(f'{k} {v:.4f}' for k, v in scores.items()))
      drawn = evaluator.pictures(state.params, state.method_state)
      if drawn is not None:
        writer.write_images(step, {'pictures': drawn})
        writer.flush()
        if jax.process_index() == 0:
          drawing.save_png(drawing.png_path(workdir, step), drawn)

    def keep_best(step: int):
      """Saves the new best state; keeps besides it only the best state a
      resume from the last regular checkpoint would fall back to."""
      fallback = best_record([r for r in results.records
                              if r['step'] <= (last_checkpoint or 0)])
      keep = {step} | ({fallback['step']} if fallback else set())
      checkpointer.wait()  # the fallback's regular checkpoint is on disk first
      best_keeper.prune(keep)
      best_keeper.save(step, _kept(state), {'step': step, SELECT: best[SELECT]})

    def chosen_state(step: int):
      """(params, method state) of the selected step, for the report."""
      if step == total:
        return state.params, state.method_state
      best_keeper.wait()
      chosen = best_keeper.restore_state(step, _kept(abstract))
      logging.info('reporting the parameters of step %d (best %s)', step, SELECT)
      return chosen['params'], chosen['method_state']

    def log(step: int, host: dict[str, float], flush: bool = True):
      nonlocal last_log_time, last_log_step
      now = time.perf_counter()
      dt = (now - last_log_time) / max(step - last_log_step, 1)
      last_log_time, last_log_step = now, step
      scalars = dict(host, step_time=dt, examples_per_sec=config.batch_size / dt,
                     **flops_lib.utilisation(model_flops, hardware_flops, dt, peak))
      writer.write_scalars(step, scalars)
      if flush:  # metrics.jsonl and TensorBoard are current at every log
        writer.flush()
      mfu = f' | MFU {100 * scalars["mfu"]:.1f}%' if 'mfu' in scalars else ''
      logging.info('step %d/%d | loss %.4f | lr %.2e | %.1f ex/s | %.0f ms/step%s | ETA %s',
                   step, total, host['loss'], host['learning_rate'],
                   config.batch_size / dt, dt * 1e3, mfu, _format_eta(dt * (total - step)))

    peers.align('first step')  # processes that compiled at different speeds
    try:
      for step in range(start + 1, total + 1):
        state, metrics = compiled(state, next(batches))
        previous, pending = pending, (step, metrics)
        # Reading back step - 1 here, before stop_here(step), is what keeps
        # the processes within a step of one another (peers.StopStep relies
        # on it): keep it every step.
        if previous is not None:
          host = check(previous)
          if should_log(previous[0]):
            log(previous[0], host)
        evaluating = should_eval(step)
        at_checkpoint = step % config.checkpoint.every == 0 or step == total
        preempted = preemption.stop_here(step) or checkpointer.reached_preemption(step)
        stopping = preempted or (stop_after is not None and step - start >= stop_after)
        if evaluating or at_checkpoint or stopping:
          host = check(pending)
          if should_log(step):  # an evaluation adds to this step's line
            log(step, host, flush=not evaluating)
          pending = None
        if evaluating:  # before the checkpoint: a checkpoint's step is evaluated
          evaluate(step)
        if at_checkpoint or stopping:
          workdir_lib.check(lease)  # another run took the workdir over: write nothing
          checkpointer.save(step, state, _meta(config, step))
          last_checkpoint = step
        result.last_step = step
        if stopping:
          result.preempted = step < total and preempted
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
    elif jax.process_index() == 0:
      logging.info('done at step %d. metrics: %s (TensorBoard: tensorboard --logdir %s); '
                   'checkpoints: %s', result.last_step, os.path.join(workdir, 'metrics.jsonl'),
                   workdir, checkpointer.directory)
    return result
