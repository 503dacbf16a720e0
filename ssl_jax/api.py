"""The public API: a trained model from a workdir, and its named features.

For use outside the loop (a notebook, another project):

  from ssl_jax import api
  model = api.load('workdirs/patchformer_tiny')      # the latest checkpoint
  model.representations                              # ('attention_pool', 'tokens', ...)
  feats = model.features(images)                     # images: [n, H, W, 3] in [0, 1]
  feats['attention_pool']                            # numpy [n, width]

`load` reads any run's workdir: a pretraining run (its method's network) or
a probe / fine-tune (its backbone). It needs no dataset: the network's
config comes from the checkpoint, and whatever a method keeps in its
parameters (e.g. a colour palette) comes with them. The features are computed in
evaluation mode (no masks, no dropout), as probes see them.

`restore_run` is the heavier sibling the command-line tools use (pictures,
the sampler): the whole run assembled from its checkpoint's config (the
dataset included) with its parameters restored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax import tasks
from ssl_jax.config.checks import ConfigError
from ssl_jax.core import assembly
from ssl_jax.core import checkpoint as ckpt_lib
from ssl_jax.methods import registry
from ssl_jax.methods.base import Method


def _checkpoint(workdir: str, step: int | None) -> tuple[ckpt_lib.Checkpointer, int]:
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=None, read_only=True)
  steps = checkpointer.all_steps()
  if not steps:
    checkpointer.close()
    raise ConfigError(f'{workdir} has no checkpoint (it must be the --workdir of a run)')
  if step is None:
    step = max(steps)
  elif step not in steps:
    checkpointer.close()
    raise ConfigError(f'no checkpoint {step} in {workdir}; available: {sorted(steps)}')
  return checkpointer, step


def _saved_config(checkpointer: ckpt_lib.Checkpointer, step: int) -> ml_collections.ConfigDict:
  """Checkpoint `step`'s config, with the keys added since it was written
  holding the values that reproduce it (so a run saved by older code builds
  the network it trained)."""
  return ml_collections.ConfigDict(
      tasks.fill_added_keys(checkpointer.restore_meta(step)['config']))


def _network_block(config: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
  """(the block that defines the network, where its parameters are in the
  train state) of a run's config."""
  if config['objective'] == tasks.CLASSIFICATION:
    # The checkpoint carries everything the network needs: a from-scratch
    # variant's data names (for its default palette) are not read again.
    backbone = config['backbone']
    block = dict(backbone, data={'image_size': backbone['data']['image_size']})
    return block, ('params', 'backbone')
  name = config['objective']
  block = {'objective': name, 'data': {'image_size': config['data']['image_size']}}
  if name in config:
    block[name] = config[name]
  return block, ('params', 'model')


@dataclasses.dataclass
class Model:
  """A trained network: its method, parameters and non-gradient state."""
  config: ml_collections.ConfigDict  # the run's whole config
  method: Method
  params: Any
  state: Any
  step: int
  image_size: int
  _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def representations(self) -> tuple[str, ...]:
    return self.method.representations()

  def features(self, images: np.ndarray, names: tuple[str, ...] | None = None, *,
               batch_size: int = 256) -> dict[str, np.ndarray]:
    """{name: float32 [n, features]} of images [n, H, W, 3] in [0, 1]
    (H = W = the model's image size), in evaluation mode."""
    images = np.asarray(images, np.float32)
    s = self.image_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3):
      raise ValueError(f'images must be [n, {s}, {s}, 3] in [0, 1] (the size the model was '
                       f'trained at), got shape {images.shape}')
    available = self.representations
    names = tuple(names) if names else available
    bad = [n for n in names if n not in available]
    if bad:
      raise ValueError(f'no representation {bad[0]!r}; this model offers '
                       + ', '.join(available))
    fn = self._represent(names)
    out = {k: [] for k in names}
    for i in range(0, len(images), batch_size):
      feats = jax.device_get(fn(self.params, self.state, jnp.asarray(images[i:i + batch_size])))
      for k in names:
        out[k].append(np.asarray(feats[k]))
    return {k: np.concatenate(v) for k, v in out.items()}

  def _represent(self, names):
    """The jit-compiled features of `names` (compiled once per set of names
    and batch shape)."""
    if names not in self._compiled:
      method = self.method

      @jax.jit
      def represent(params, state, images):
        feats = method.represent(params, {'image': images}, state=state)
        return {k: feats[k] for k in names}
      self._compiled[names] = represent
    return self._compiled[names]


def load(workdir: str, step: int | None = None) -> Model:
  """The network of the run in `workdir` at checkpoint `step` (None: the
  latest), on this process's first device. ConfigError: no such checkpoint."""
  checkpointer, step = _checkpoint(workdir, step)
  try:
    config = _saved_config(checkpointer, step)
    block, where = _network_block(config.to_dict())
    block = ml_collections.ConfigDict(block)
    method = registry.get(block.objective)(block, assembly.dtype_of(config))
    size = block.data.image_size
    one = {'image': jnp.zeros((1, size, size, 3), jnp.float32)}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def abstract(fn):
      return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          jax.eval_shape(fn))

    shapes = abstract(lambda: method.init(jax.random.key(0), one, decoder=False))
    params = checkpointer.restore_subtree(step, where, shapes) if jax.tree.leaves(shapes) else {}
    state = {}
    if method.state_in_evaluation == 'frozen':
      shapes = abstract(lambda: method.init_state(jax.random.key(0), one, method.init(
          jax.random.key(0), one, decoder=False)))
      if jax.tree.leaves(shapes):
        prefix = ('method_state',)
        state = checkpointer.restore_subtree(step, prefix, shapes)
  finally:
    checkpointer.close()
  return Model(config, method, params, state, step, size)


def restore_run(workdir: str, step: int | None = None):
  """(run, params, method state, step): the run of `workdir` assembled from
  its checkpoint's config (its dataset must be available), with the
  parameters and state of checkpoint `step` (None: the latest)."""
  checkpointer, step = _checkpoint(workdir, step)
  try:
    config = _saved_config(checkpointer, step)
    run = assembly.assemble(config, restored=True)
    abstract = run.trainer.abstract_state()
    params = checkpointer.restore_subtree(step, ('params',), abstract.params)
    state = (checkpointer.restore_subtree(step, ('method_state',), abstract.method_state)
             if jax.tree.leaves(abstract.method_state) else {})
  finally:
    checkpointer.close()
  return run, params, state, step
