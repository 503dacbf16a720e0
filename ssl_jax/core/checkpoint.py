"""Orbax checkpoints of the train state plus the data position and config.

Each checkpoint step holds two items: 'state' (the TrainState pytree, saved
asynchronously and restored straight into its shardings) and 'meta' (JSON:
the config, and the data position: the next global example index). Orbax
writes each step into a temporary directory and renames it when complete, so
a run killed at any moment leaves only whole checkpoints behind.

A checkpoint that cannot be read raises CheckpointError with one line: the
step, its directory, the underlying reason (without the object reprs that
orbax and TensorStore put in their messages) and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

try:  # where orbax runs its coroutines (a private module: optional)
  from orbax.checkpoint._src import asyncio_utils as _orbax_asyncio
except ImportError:  # another orbax layout: restores work, only less tidily on errors
  _orbax_asyncio = None
try:  # the array metadata store of orbax's default jax.Array handler (private: optional)
  from orbax.checkpoint._src.metadata import array_metadata_store as _orbax_array_metadata
except ImportError:  # another orbax layout: saves on the CPU keep orbax's default handler
  _orbax_array_metadata = None


def _same_shapes(tree: Any, abstract: Any) -> bool:
  """Whether `tree` has the structure, shapes and dtypes of `abstract`."""
  shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  return shapes(tree) == shapes(abstract)


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message says what to do."""


# Object reprs that orbax and TensorStore interpolate into their messages
# (e.g. "See full TensorStore details: <bound method ...spec of
# TensorStore({...40 lines...})>"): removed from the reasons shown.
_REPR_START = re.compile(r'<(?:bound method |built-in method |built-in function |function |'
                         r'[\w.]+ object at 0x)')
_CLOSERS = {'(': ')', '[': ']', '{': '}'}
_MAX_REASON = 400


def _end_of_repr(text: str, start: int) -> int:
  """The index just past the '>' closing the repr that opens at `start`
  (brackets and quoted strings inside it may hold '<' and '>'), or the end of
  `text` when it is cut off."""
  angles, stack, quote = 0, [], None
  i = start
  while i < len(text):
    c = text[i]
    if quote:
      if c == '\\':
        i += 1
      elif c == quote:
        quote = None
    elif c in '\'"':
      quote = c
    elif c in _CLOSERS:
      stack.append(_CLOSERS[c])
    elif stack and c == stack[-1]:
      stack.pop()
    elif not stack and c == '<':
      angles += 1
    elif not stack and c == '>':
      angles -= 1
      if angles == 0:
        return i + 1
    i += 1
  return len(text)


def _one_line(text: str) -> str:
  """`text` without object reprs, on one line, at most _MAX_REASON characters."""
  parts, i = [], 0
  while (m := _REPR_START.search(text, i)) is not None:
    parts.append(text[i:m.start()])
    i = _end_of_repr(text, m.start())
  parts.append(text[i:])
  text = ' '.join(''.join(parts).split())
  if len(parts) > 1:  # where a repr was: "details: <repr>." -> "details."
    text = re.sub(r' ([.,;:)])', r'\1', text)
    text = re.sub(r':(?=[.,;)]|$)', '', text)
  return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3].rstrip() + '...'


def _reason(error: BaseException) -> str:
  """'Type: message' of the error a failure started with (the end of its
  `raise ... from` chain: e.g. TensorStore's "OUT_OF_RANGE: Error reading
  <array> ... is not valid for value of size N" under orbax's "Encountered
  error while reading array index"), on one line and without object reprs;
  the outer errors when the inner ones say nothing."""
  chain = [error]
  while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain:
    chain.append(chain[-1].__cause__)
  for e in reversed(chain):
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
      text = e.args[0]  # str(KeyError) is the repr of its message
    else:
      text = str(e)
    text = _one_line(text)
    if text:
      return f'{type(e).__name__}: {text}'
  return type(error).__name__


# How long a failed orbax run waits for its other reads (or writes) to
# finish before cancelling them; then how long cancelled ones get to report.
_SETTLE_S = 30.0
_CANCELLED_SETTLE_S = 0.05


async def _settle_the_rest_on_error(coro):
  """Runs `coro`; if it raises, first lets every other task of the running
  loop finish (cancelling those still running after _SETTLE_S), then raises.

  orbax runs each restore in a fresh event loop that it closes as soon as
  its coroutine returns (asyncio_utils._run_sync_via_new_loop, without
  asyncio.run's teardown). When one array's read fails, asyncio.gather
  raises at once while the reads of other arrays are still in flight in
  TensorStore: the loop is closed under them, and each read that completes
  later calls loop.call_soon_threadsafe on the closed loop from a TensorStore
  thread, which prints a "RuntimeError: Event loop is closed" traceback
  (and, at garbage collection, "Task was destroyed but it is pending",
  "exception was never retrieved", "Exception ignored in: <coroutine>"),
  around and after the one-line error.

  Waiting for those reads is what removes the race: a task waiting on a
  TensorStore read ends only after the read has called back into the loop.
  Cancelling alone does not (a read that completes while it is being
  cancelled still calls back later), so it is the fallback for runs that do
  not finish in time, with a short pause for such late calls. A failed
  restore therefore takes about as long as the reads it had started."""
  try:
    return await coro
  except Exception:  # not on Ctrl-C or cancellation: those stop at once
    current = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not current]
    if rest:
      _, late = await asyncio.wait(rest, timeout=_SETTLE_S)
      for task in late:
        task.cancel()
      await asyncio.gather(*rest, return_exceptions=True)  # their errors: retrieved
      if late:
        await asyncio.sleep(_CANCELLED_SETTLE_S)
    raise


def _tidy_orbax_failures() -> None:
  """Makes orbax's run_sync (every synchronous restore and save runs its
  coroutine through it) settle the coroutine's other tasks before it
  returns a failure (see _settle_the_rest_on_error); a run that succeeds is
  unchanged. Idempotent."""
  run_sync = getattr(_orbax_asyncio, 'run_sync', None)
  if run_sync is None or getattr(run_sync, '_ssl_jax_tidy', False):
    return

  @functools.wraps(run_sync)
  def tidy_run_sync(coro, *args, **kwargs):
    return run_sync(_settle_the_rest_on_error(coro), *args, **kwargs)

  tidy_run_sync._ssl_jax_tidy = True
  _orbax_asyncio.run_sync = tidy_run_sync


def _whole_shards_on_the_cpu() -> None:
  """On the CPU backend, replica 0 of each shard writes it whole (as orbax
  does on GPUs), instead of orbax's default replica-parallel saving, where
  each replica of a replicated shard writes a slice of it. On the CPU a
  device-to-host copy is a copy within the same memory, so the slices save
  nothing; each is an eagerly compiled program, one per array shape, and
  the first save of every process compiled them all: 352 for a tiny
  ResNet-based method's state on 8 devices, 20 s on 2 cores. The files
  written hold the same arrays. Idempotent; other backends are unchanged."""
  if (_orbax_array_metadata is None or jax.default_backend() != 'cpu'
      or getattr(ocp.type_handlers.get_type_handler(jax.Array), '_ssl_jax_whole', False)):
    return
  handler = ocp.type_handlers.ArrayHandler(
      array_metadata_store=_orbax_array_metadata.Store(), use_replica_parallel=False)
  handler._ssl_jax_whole = True  # pylint: disable=protected-access
  # orbax warns that it overrides its own jax.Array handler: meant, not news.
  absl_logger = logging.getLogger('absl')
  quiet = lambda record: record.levelno > logging.WARNING  # noqa: E731
  absl_logger.addFilter(quiet)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.removeFilter(quiet)


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run in `<workdir>/<subdir>`
  (`checkpoints`; `best`: the parameters an early-stopping run selected),
  and every one whose step is a multiple of `keep_period` (when > 0): a
  run's checkpoints along the way survive however many extra ones its
  preemptions save."""

  def __init__(self, workdir: str, *, keep: int | None, keep_period: int = 0,
               asynchronous: bool = True, read_only: bool = False,
               subdir: str = 'checkpoints'):
    _tidy_orbax_failures()
    _whole_shards_on_the_cpu()
    if '://' not in workdir:  # orbax needs absolute local paths
      workdir = os.path.abspath(workdir)
    self.directory = os.path.join(workdir, subdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period or None, create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=asynchronous)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'))
    self._closed = False

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

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

  def prune(self, keep) -> None:
    """Deletes every checkpoint whose step is not in `keep`."""
    self.wait()
    for step in self.all_steps():
      if step not in keep:
        self._manager.delete(step)

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
      raise self._unreadable(step, 'meta', e) from e

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
        raise self._unreadable(step, 'state', e) from e
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
      raise self._unreadable(step, 'state', e) from e
    tree = out['state']
    for key in path:
      tree = tree[key]
    if not _same_shapes(tree, abstract):
      raise CheckpointError(f'checkpoint {step} in {self.directory}: the parameters under '
                            f'{"/".join(path)} do not have the shapes this config expects')
    return tree

  def _unreadable(self, step: int, item: str, error: Exception) -> CheckpointError:
    """`item`: the part that failed ('state', 'meta'), when the reason alone
    (e.g. a JSONDecodeError) does not say which file it is in."""
    try:
      older = [s for s in self._manager.all_steps() if s < step]
    except Exception:  # pylint: disable=broad-except  # the listing is only advice
      older = []
    resume = (f'to resume from the previous checkpoint (step {max(older)}), move only '
              f'{os.path.join(self.directory, str(step))} away' if older else
              'there is no older checkpoint to resume from')
    return CheckpointError(
        f'checkpoint {step} in {self.directory} is unreadable or incompatible '
        f'({item}: {_reason(error)}). Nothing was overwritten. To start over, move that '
        f'directory away or use a new --workdir; {resume}.')

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
      raise CheckpointError(
          f'writing a checkpoint to {self.directory} failed ({_reason(e)})') from e

  def close(self) -> None:
    """Waits for pending saves and releases orbax's threads (idempotent)."""
    if not self._closed:
      self._closed = True
      self._manager.close()
