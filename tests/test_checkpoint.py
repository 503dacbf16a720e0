import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, tree_digest

from ssl_jax.core import checkpoint as ckpt_lib


def test_relative_workdir_round_trip(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  checkpointer = ckpt_lib.Checkpointer('runs/rel', keep=2)
  try:
    _round_trip(checkpointer, tmp_path)
  finally:
    checkpointer.close()


def test_saving_replicated_arrays_on_the_cpu_compiles_nothing(tmp_path):
  """Replica-parallel saving would compile a slice per array shape on the
  first save of a process (ckpt_lib._whole_shards_on_the_cpu); the arrays
  come back whole and in their shardings."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  split = NamedSharding(mesh, PartitionSpec('data'))
  state = {f'w{n}': jax.device_put(jnp.full((8 * n, 3), float(n)), replicated)
           for n in range(1, 4)}
  state['rows'] = jax.device_put(jnp.arange(16.0).reshape(8, 2), split)
  compiled = []

  def listen(event, duration, **kwargs):
    if 'compile' in event:
      compiled.append(event)

  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'run'), keep=1)
  try:
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
      checkpointer.save(1, state, {'step': 1})
      checkpointer.wait()
    finally:
      jax.monitoring.unregister_event_duration_listener(listen)
    assert not compiled, compiled
    restored = checkpointer.restore_state(1, state)
  finally:
    checkpointer.close()
  for name, value in state.items():
    np.testing.assert_array_equal(restored[name], value)
    assert restored[name].sharding == value.sharding


def _round_trip(checkpointer, tmp_path):
  state = {'w': jnp.arange(6.0).reshape(2, 3), 'step': jnp.array(3)}
  for step in (1, 2, 3):
    checkpointer.save(step, state, {'step': step})
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 3]  # the last `keep`
  assert checkpointer.directory == str(tmp_path / 'runs' / 'rel' / 'checkpoints')
  restored = checkpointer.restore_state(3, state)
  np.testing.assert_array_equal(restored['w'], state['w'])
  assert checkpointer.restore_meta(3) == {'step': 3}
  with pytest.raises(ckpt_lib.CheckpointError,
                     match='checkpoint 3 .* is unreadable or incompatible .*stored shape'):
    checkpointer.restore_state(3, {'w': jnp.zeros((3, 2)), 'step': jnp.array(0)})


def test_keep_period_keeps_its_multiples_beside_the_last_keep(tmp_path):
  """Steps 3 and 5 are saved off the period (preemptions): the last `keep`
  and every multiple of `keep_period` stay, the others go."""
  state = {'w': jnp.arange(3.0)}
  with ckpt_lib.Checkpointer(str(tmp_path), keep=1, keep_period=2,
                             asynchronous=False) as checkpointer:
    for step in (2, 3, 4, 5, 6, 7):
      checkpointer.save(step, state, {'step': step})
    checkpointer.wait()
    assert checkpointer.all_steps() == [2, 4, 6, 7]
  with ckpt_lib.Checkpointer(str(tmp_path / 'none'), keep=1,
                             asynchronous=False) as checkpointer:
    for step in (2, 3, 4):
      checkpointer.save(step, state, {'step': step})
    checkpointer.wait()
    assert checkpointer.all_steps() == [4]


def test_checkpoints_from_before_the_method_state_restore(tmp_path):
  """A train state saved without `method_state` (written before the field
  existed) restores into today's TrainState with an empty method state; a
  method state that has leaves cannot be conjured and stays an error."""
  import optax

  from ssl_jax.core import step as step_lib
  params = {'w': jnp.arange(6.0).reshape(2, 3)}
  opt_state = optax.adam(1e-3).init(params)
  state = step_lib.TrainState(jnp.array(7, jnp.int32), params, opt_state)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=2, asynchronous=False)
  try:
    checkpointer.save(7, {'step': state.step, 'params': params, 'opt_state': opt_state},
                      {'step': 7})
    checkpointer.wait()
    restored = checkpointer.restore_state(7, state)
    assert isinstance(restored, step_lib.TrainState) and restored.method_state == {}
    assert int(restored.step) == 7
    np.testing.assert_array_equal(restored.params['w'], params['w'])
    with pytest.raises(ckpt_lib.CheckpointError, match='unreadable or incompatible'):
      checkpointer.restore_state(7, state.replace(method_state={'table': jnp.zeros(3)}))
  finally:
    checkpointer.close()


# A damaged checkpoint: one line that names the step, its directory, the
# reason without object reprs, and what to do; nothing else on stderr.

def _array_file(step_dir):
  """The largest file of array data in a checkpoint step's state."""
  metadata = {'_METADATA', '_sharding', 'manifest.ocdbt', 'commit_success.txt'}
  files = [os.path.join(root, name)
           for root, _, names in os.walk(os.path.join(step_dir, 'state'))
           for name in names if name not in metadata and 'array_metadatas' not in root]
  return max(files, key=os.path.getsize)


def _write(path, data):
  with open(path, 'wb') as f:
    f.write(data)


def _empty(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


# kind -> (damage to checkpoints/4, what the reason in the message says)
DAMAGE = {
    'truncated array file': (lambda d: os.truncate(_array_file(d), 100),
                             'state: ValueError: ', 'Error reading'),
    'deleted array file': (lambda d: os.remove(_array_file(d)),
                           'state: ValueError: ', 'Error reading'),
    'garbage array metadata': (lambda d: _write(os.path.join(d, 'state', '_METADATA'), b'{x'),
                               'state: JSONDecodeError: ', 'Expecting'),
    'garbage meta json': (lambda d: _write(os.path.join(d, 'meta', 'metadata'), b'not json {'),
                          'meta: JSONDecodeError: ', 'Expecting value'),
    'deleted meta json': (lambda d: os.remove(os.path.join(d, 'meta', 'metadata')),
                          'meta: FileNotFoundError: ', 'meta/metadata not found'),
    'empty step directory': (_empty, 'meta: KeyError: ', 'Item "meta" was not found'),
    'deleted state directory': (lambda d: shutil.rmtree(os.path.join(d, 'state')),
                                'state: KeyError: ', 'Item "state" was not found'),
}


def _state(big=0):
  """A small train-state-like tree; `big` adds an incompressible array of
  that many float32s (whose read outlasts a failure elsewhere)."""
  rng = np.random.default_rng(0)
  state = {'w': rng.standard_normal((128, 64), dtype=np.float32),
           'b': np.arange(8, dtype=np.float32), 'step': np.array(4, np.int32)}
  if big:
    state['big'] = rng.standard_normal((big,), dtype=np.float32)
  return state


@pytest.fixture(scope='module')
def two_checkpoints(tmp_path_factory):
  """A workdir with checkpoints 2 and 4, written as a run writes them."""
  workdir = str(tmp_path_factory.mktemp('two_checkpoints'))
  with ckpt_lib.Checkpointer(workdir, keep=3, asynchronous=False) as checkpointer:
    for step in (2, 4):
      checkpointer.save(step, _state(), {'step': step})
    checkpointer.wait()
  return workdir


def test_the_console_drops_orbaxs_warnings_about_reading_checkpoints_read_only(
    two_checkpoints, caplog):
  """Probes and reports open a pretraining's checkpoints read-only on
  purpose: orbax's two warnings about it are dropped from the console, its
  other warnings are kept, and so is this code's own output."""
  import logging as pylogging

  from ssl_jax.core import console as console_lib
  console = console_lib.LibraryInfoFilter()
  with caplog.at_level(pylogging.WARNING):
    with ckpt_lib.Checkpointer(two_checkpoints, keep=None, read_only=True) as checkpointer:
      assert checkpointer.latest_step() == 4
  read_only = [r for r in caplog.records if 'read only' in r.getMessage().replace('_', ' ')]
  assert len(read_only) >= 2, [r.getMessage() for r in caplog.records]  # orbax still says so
  assert not any(console.filter(r) for r in read_only)

  def record(level, path, message):
    return pylogging.LogRecord('absl', level, path, 1, message, None, None)
  orbax = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint', 'manager.py')
  assert console.filter(record(pylogging.WARNING, orbax, 'Some other orbax warning'))
  assert not console.filter(record(pylogging.INFO, orbax, 'Saving checkpoint'))
  assert console.filter(record(pylogging.INFO, __file__, 'step 10/100 | loss 1.0'))
  assert console.filter(record(pylogging.ERROR, orbax, 'Given directory is read only=x'))


def _damaged_copy(two_checkpoints, tmp_path, kind):
  workdir = str(tmp_path / 'w')
  shutil.copytree(two_checkpoints, workdir)
  DAMAGE[kind][0](os.path.join(workdir, 'checkpoints', '4'))
  return workdir


def _assert_clean(message, workdir, step=4, previous=2):
  directory = os.path.join(workdir, 'checkpoints')
  assert '\n' not in message, message
  assert '<bound method' not in message and ' object at 0x' not in message, message
  assert message.startswith(f'checkpoint {step} in {directory} is unreadable or incompatible ('), message
  assert message.endswith(
      'Nothing was overwritten. To start over, move that directory away or use a new '
      f'--workdir; to resume from the previous checkpoint (step {previous}), move only '
      f'{os.path.join(directory, str(step))} away.'), message


@pytest.mark.parametrize('kind', sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_clean_line_and_left_as_it_is(two_checkpoints, tmp_path,
                                                                  kind):
  workdir = _damaged_copy(two_checkpoints, tmp_path, kind)
  before = tree_digest(workdir)
  _, item, reason = DAMAGE[kind]
  with ckpt_lib.Checkpointer(workdir, keep=3) as checkpointer:
    assert checkpointer.latest_step() == 4
    with pytest.raises(ckpt_lib.CheckpointError) as error:
      checkpointer.restore_meta(4)
      checkpointer.restore_state(4, _state())
    # the previous checkpoint is intact: what the message tells the user to resume from
    assert checkpointer.restore_meta(2) == {'step': 2}
    np.testing.assert_array_equal(checkpointer.restore_state(2, _state())['w'], _state()['w'])
  message = str(error.value)
  _assert_clean(message, workdir)
  assert f'({item}' in message and reason in message, message
  assert tree_digest(workdir) == before


@pytest.mark.parametrize('damage', ['garbage', 'deleted'])
def test_orbax_restores_without_its_step_metadata(two_checkpoints, tmp_path, damage):
  """_CHECKPOINT_METADATA (timestamps, item handlers) garbage or missing:
  orbax logs it and the checkpoint still restores; the run resumes."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(two_checkpoints, workdir)
  path = os.path.join(workdir, 'checkpoints', '4', '_CHECKPOINT_METADATA')
  _write(path, b'garbage{{') if damage == 'garbage' else os.remove(path)
  with ckpt_lib.Checkpointer(workdir, keep=3) as checkpointer:
    assert checkpointer.latest_step() == 4
    assert checkpointer.restore_meta(4) == {'step': 4}
    np.testing.assert_array_equal(checkpointer.restore_state(4, _state())['w'], _state()['w'])


def test_the_reason_is_the_original_error_on_one_line_without_reprs():
  store = ("<bound method pybind11_detail.spec of TensorStore({\n  'dtype': '<f4',\n"
           "  'shape': [[3], [2]],\n})>")
  try:
    try:
      raise ValueError('OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT database: '
                       'Requested byte range [0, 10) is not valid for value of size 5')
    except ValueError as e:
      raise Exception('Encountered error while reading array index: (slice(0, 3, 1),). '
                      f'See full TensorStore details: {store}.') from e
  except Exception as e:  # pylint: disable=broad-except
    chained = e
  assert ckpt_lib._reason(chained) == (
      'ValueError: OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT database: '
      'Requested byte range [0, 10) is not valid for value of size 5')
  assert ckpt_lib._reason(Exception(f'cannot read\n  {store}: at <x.Y object at 0x7f01>.')) == (
      'Exception: cannot read: at.')
  assert ckpt_lib._reason(KeyError('Item "state" was not found')) == (
      'KeyError: Item "state" was not found')
  assert ckpt_lib._reason(Exception(store)) == 'Exception'
  shapes = 'Requested shape: () is not compatible with the stored shape: (3,).'
  assert ckpt_lib._reason(ValueError(shapes)) == f'ValueError: {shapes}'  # no repr: as it was
  long = ckpt_lib._reason(RuntimeError('x' * 1000))
  assert len(long) < 450 and long.endswith('...')


def test_without_an_older_checkpoint_the_message_says_so(tmp_path):
  workdir = str(tmp_path)
  with ckpt_lib.Checkpointer(workdir, keep=3, asynchronous=False) as checkpointer:
    checkpointer.save(3, _state(), {'step': 3})
    checkpointer.wait()
  _write(os.path.join(workdir, 'checkpoints', '3', 'meta', 'metadata'), b'{')
  with ckpt_lib.Checkpointer(workdir, keep=3) as checkpointer:
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=r'^checkpoint 3 in .*\(meta: JSONDecodeError: .*use a new --workdir; '
                             r'there is no older checkpoint to resume from\.$'):
      checkpointer.restore_meta(3)


def _failing_orbax_run(other):
  """Runs, as orbax runs a restore, `other` next to a read that fails."""
  from orbax.checkpoint._src import asyncio_utils

  async def failing_read():
    await asyncio.sleep(0.01)
    raise ValueError('damaged')

  async def restore():
    await asyncio.gather(other(), failing_read())

  with pytest.raises(ValueError, match='damaged'):
    asyncio_utils.run_sync(restore())


def test_a_failed_orbax_run_lets_reads_in_flight_call_back_first(tmp_path, monkeypatch):
  """A TensorStore read still in flight when another read fails finishes
  before orbax closes the event loop, instead of calling back into the
  closed loop later ("RuntimeError: Event loop is closed" from its thread)."""
  import tensorstore as ts
  ckpt_lib.Checkpointer(str(tmp_path), keep=1).close()  # installs the wrapper
  unraisable = []
  monkeypatch.setattr(sys, 'unraisablehook', unraisable.append)
  promise, future = ts.Promise.new()
  timer = threading.Timer(0.3, promise.set_result, ['read'])
  results = []

  async def read_in_flight():
    results.append(await future)

  timer.start()
  try:
    _failing_orbax_run(read_in_flight)
  finally:
    timer.join()
  time.sleep(0.1)
  assert results == ['read'] and unraisable == []


def test_a_failed_orbax_run_cancels_what_does_not_finish(tmp_path, monkeypatch):
  from orbax.checkpoint._src import asyncio_utils
  ckpt_lib.Checkpointer(str(tmp_path), keep=1).close()
  monkeypatch.setattr(ckpt_lib, '_SETTLE_S', 0.2)
  events = []

  async def stuck():
    try:
      await asyncio.sleep(60)
    except asyncio.CancelledError:
      events.append('cancelled')
      raise

  start = time.perf_counter()
  _failing_orbax_run(stuck)
  assert events == ['cancelled'] and time.perf_counter() - start < 5
  assert asyncio_utils.run_sync(asyncio.sleep(0, 'ok')) == 'ok'  # success: unchanged


# In a fresh process, as main.py reports a CheckpointError: a restore that
# fails while another array's read is in flight (a mismatched shape next to
# a 16 MB array: the failure always comes first), then a truncated file.
_RESTORE = '''
import sys, time
import jax
import numpy as np
sys.path.insert(0, sys.argv[1])
from ssl_jax.core import checkpoint as ckpt_lib
workdir, big = sys.argv[2], int(sys.argv[3])
one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
like = lambda shape, dtype=np.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=one)
state = {'w': like((128, 64)), 'b': like((8,)), 'step': like((), np.int32), 'big': like((big,))}
checkpointer = ckpt_lib.Checkpointer(workdir, keep=3)
try:
  try:
    checkpointer.restore_state(2, dict(state, b=like((9,))))
  except ckpt_lib.CheckpointError as e:
    print('first:', e, flush=True)
  time.sleep(1)  # reads left running would now call into a closed event loop
  checkpointer.restore_state(4, state)
except ckpt_lib.CheckpointError as e:
  print(f'error: {e}', file=sys.stderr)
  sys.exit(1)
'''


def test_a_failing_restore_in_a_fresh_process_prints_only_its_error(tmp_path):
  big = 4 * 2**20
  workdir = str(tmp_path / 'w')
  with ckpt_lib.Checkpointer(workdir, keep=3, asynchronous=False) as checkpointer:
    for step in (2, 4):
      checkpointer.save(step, _state(big), {'step': step})
    checkpointer.wait()
  os.truncate(_array_file(os.path.join(workdir, 'checkpoints', '4')), 1000)
  before = tree_digest(workdir)
  out = subprocess.run([sys.executable, '-c', _RESTORE, ROOT, workdir, str(big)],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 1, out.stderr
  assert 'is not compatible with the stored shape' in out.stdout, out.stdout
  assert tree_digest(workdir) == before
  for noise in ('Traceback', 'Event loop is closed', 'Exception ignored', 'never retrieved',
                'was destroyed', '<bound method', ' object at 0x'):
    assert noise not in out.stderr + out.stdout, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: checkpoint 4 in '), out.stderr
  _assert_clean(last[len('error: '):], workdir)
  assert 'state: ValueError: ' in last and 'Error reading' in last


@pytest.mark.slow
def test_main_py_reports_a_damaged_checkpoint_in_one_line(data_dir, tmp_path):
  """The command line end to end: the same command on a workdir whose latest
  checkpoint is damaged prints one line, exits 1 and changes nothing."""
  workdir = str(tmp_path / 'w')
  with ckpt_lib.Checkpointer(workdir, keep=3, asynchronous=False) as checkpointer:
    for step in (2, 4):
      checkpointer.save(step, _state(), {'step': step})
    checkpointer.wait()
  _write(os.path.join(workdir, 'checkpoints', '4', 'meta', 'metadata'), b'not json {')
  before = tree_digest(workdir)
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'), '--config=configs/patchformer.py:tiny',
       f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
       '--config.data.name=ssl_jax_shapes/small', '--config.data.image_size=32',
       '--config.eval.split=test[:96]', '--config.eval.train_split=train[:160]'],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 1, out.stderr
  for noise in ('Traceback', 'Event loop is closed', 'Exception ignored', 'never retrieved'):
    assert noise not in out.stderr, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: checkpoint 4 in '), out.stderr
  _assert_clean(last[len('error: '):], workdir)
  assert '(meta: JSONDecodeError: ' in last
  assert tree_digest(workdir) == before
