import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.core import checkpoint as ckpt_lib


def test_relative_workdir_round_trip(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  checkpointer = ckpt_lib.Checkpointer('runs/rel', keep=2)
  try:
    _round_trip(checkpointer, tmp_path)
  finally:
    checkpointer.close()


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
