"""Orbax checkpoints of the train state plus the data position and config.

Each checkpoint step holds two items: 'state' (the TrainState pytree, saved
asynchronously and restored straight into its shardings) and 'meta' (JSON:
the config, and the data position: the next global example index). Orbax
writes each step into a temporary directory and renames it when complete, so
a run killed at any moment leaves only whole checkpoints behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _same_shapes(tree: Any, abstract: Any) -> bool:
  """Whether `tree` has the structure, shapes and dtypes of `abstract`."""
  shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  return shapes(tree) == shapes(abstract)


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message says what to do."""


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run in `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int | None, asynchronous: bool = True,
               read_only: bool = False):
    if '://' not in workdir:  # orbax needs absolute local paths
      workdir = os.path.abspath(workdir)
    self.directory = os.path.join(workdir, 'checkpoints')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=asynchronous)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save; first raises if the previous one failed."""
    with self._save_errors():
      self._manager.check_for_errors()
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any of them got a preemption notice
    (multi-host TPU pods; always False without jax.distributed)."""
    return self._manager.reached_preemption(step)

  def restore_meta(self, step: int) -> dict[str, Any]:
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))
      return dict(out['meta'])
    except Exception as e:  # any corruption: report it, never start over
      raise self._unreadable(step, e) from e

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """Restores into the shapes, dtypes and shardings of `abstract_state`
    (a pytree of jax.ShapeDtypeStruct with shardings)."""
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
      state = out['state']
    except Exception as e:
      state = self._restore_without_empty_fields(step, abstract_state)
      if state is None:
        raise self._unreadable(step, e) from e
    if not _same_shapes(state, abstract_state):
      raise CheckpointError(
          f'checkpoint {step} in {self.directory} does not match this config\'s '
          'model (parameter shapes or dtypes differ); use the config it was written with '
          'or a new --workdir')
    return state

  def _restore_without_empty_fields(self, step: int, abstract_state: Any) -> Any | None:
    """A checkpoint written before the state had some field (e.g. the
    method's non-gradient state, added to the train state after the first
    checkpoints were written) restores into the current state when those
    fields hold nothing (no leaves): they are restored as empty. None when
    that is not the case, or the checkpoint does not restore that way either."""
    if not dataclasses.is_dataclass(abstract_state):
      return None
    fields = {f.name: getattr(abstract_state, f.name)
              for f in dataclasses.fields(abstract_state)}
    kept = {k: v for k, v in fields.items() if jax.tree.leaves(v)}
    if len(kept) == len(fields):
      return None
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(kept)))
    except Exception:  # not that either: report the original error
      return None
    return abstract_state.replace(**{k: out['state'][k] for k in kept},
                                  **{k: v for k, v in fields.items() if k not in kept})

  def restore_subtree(self, step: int, path: tuple[str, ...], abstract: Any) -> Any:
    """Restores only state[path[0]][path[1]]... (e.g. a pretraining run's
    ('params', 'model')) into the shapes and shardings of `abstract`; the
    rest of the checkpoint (optimizer state, heads) is never read."""
    target = abstract
    for key in reversed(path):
      target = {key: target}
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))
    except Exception as e:
      raise self._unreadable(step, e) from e
    tree = out['state']
    for key in path:
      tree = tree[key]
    if not _same_shapes(tree, abstract):
      raise CheckpointError(f'checkpoint {step} in {self.directory}: the parameters under '
                            f'{"/".join(path)} do not have the shapes this config expects')
    return tree

  def _unreadable(self, step: int, error: Exception) -> CheckpointError:
    return CheckpointError(
        f'checkpoint {step} in {self.directory} is unreadable or incompatible '
        f'({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}). '
        'Nothing was overwritten. To start over, move that directory away or '
        'use a new --workdir; to resume from an older checkpoint, move only '
        f'{os.path.join(self.directory, str(step))} away.')

  def wait(self) -> None:
    """Blocks until every asynchronous save has been committed; raises
    CheckpointError if one failed."""
    with self._save_errors():
      self._manager.wait_until_finished()
      self._manager.check_for_errors()

  @contextlib.contextmanager
  def _save_errors(self):
    """A failed background save stops the run instead of passing silently."""
    try:
      yield
    except Exception as e:
      raise CheckpointError(f'writing a checkpoint to {self.directory} failed: {e}') from e

  def close(self) -> None:
    self._manager.close()
