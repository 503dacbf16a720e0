import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib


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
