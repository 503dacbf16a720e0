"""The multi-task ViT: one ViT with [CLS], contrastive and rotation tokens
before the patches, and one head per enabled task.

Heads (each built only when its task is enabled, so a disabled task has no
parameters and no FLOPs):
  contrastive        MLP on the [CT] token's output -> `contrastive_dim`
  rotation           linear on the rotation token's output -> 4
  colorization       shared MLP on the grayscale patches' tokens -> colour
                     targets (mean ab, or r x r cells of Q ab-bin logits)
  inpainting         shared MLP on the masked patches' tokens -> p * p * 3
  relative_position  MLP on the two tokens of a pair, concatenated -> 8
  jigsaw             shared MLP on the moved patches' tokens -> N (cells)
MLP: Dense(head_width) -> GELU -> Dense(out).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.nn.patches import gather
from ssl_jax.nn.vit import ViT

PREFIX = ('cls', 'contrastive', 'rotation')
# Position of each prefix token in the output sequence.
CLS, CT, ROT = range(len(PREFIX))


class Mlp(nn.Module):
  hidden: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    return nn.Dense(self.out, dtype=self.dtype)(x)


class LogVariances(nn.Module):
  """The learned uncertainty weighting's s_t = log sigma_t^2, one per task,
  starting at 0 (weight 1). A submodule of its own so that a network
  built for representations only (encode) has none."""
  num: int

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param('log_vars', nn.initializers.zeros, (self.num,))


class MultiTaskViT(nn.Module):
  """heads_out: ((task, output width), ...) of the enabled tasks."""
  num_patches: int
  width: int
  depth: int
  heads: int
  heads_out: tuple[tuple[str, int], ...]
  head_width: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  drop_path: float = 0.0
  withhold_positions: bool = False
  num_log_vars: int = 0  # > 0: the learned uncertainty weighting's s_t, one per task
  remat: bool = False
  dtype: Any = jnp.float32
  attention: str = 'xla'

  def setup(self):
    outs = dict(self.heads_out)
    self.vit = ViT(self.num_patches, self.width, self.depth, self.heads, self.mlp_ratio,
                   self.dropout, self.drop_path, prefix=PREFIX,
                   mask_token='inpainting' in outs,
                   no_position_token=self.withhold_positions and 'relative_position' in outs,
                   remat=self.remat, dtype=self.dtype, attention=self.attention)
    self.task_heads = {
        task: (nn.Dense(out, dtype=self.dtype, name=f'{task}_head') if task == 'rotation'
               else Mlp(self.head_width, out, self.dtype, name=f'{task}_head'))
        for task, out in self.heads_out}
    if self.num_log_vars:
      self.weighting = LogVariances(self.num_log_vars, name='weighting')

  def encode(self, patches: jax.Array, *, masked=None, unpositioned=None,
             train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """patches [b, N, p*p*3] in [-1, 1] -> (tokens [b, 3 + N, width], layers)."""
    return self.vit(patches, masked=masked, unpositioned=unpositioned, train=train)

  def __call__(self, patches: jax.Array, cells: dict[str, Any], *, masked=None,
               unpositioned=None, train: bool) -> tuple[dict[str, jax.Array], jax.Array]:
    """(outputs of the heads whose cells are given, plus 'log_vars' under
    the uncertainty weighting; tokens). cells:
    'contrastive' / 'rotation': None (the token is read); 'colorization',
    'inpainting', 'jigsaw': [b, k] cells; 'relative_position': (anchor,
    neighbour) [b, P] each."""
    tokens, _ = self.encode(patches, masked=masked, unpositioned=unpositioned, train=train)
    grid_tokens = tokens[:, len(PREFIX):]
    out = {}
    for task, where in cells.items():
      head = self.task_heads[task]
      if task == 'contrastive':
        out[task] = head(tokens[:, CT])
      elif task == 'rotation':
        out[task] = head(tokens[:, ROT])
      elif task == 'relative_position':
        anchor, neighbour = where
        out[task] = head(jnp.concatenate([gather(grid_tokens, anchor),
                                          gather(grid_tokens, neighbour)], axis=-1))
      else:
        out[task] = head(gather(grid_tokens, where))
    if self.num_log_vars:
      out['log_vars'] = self.weighting()
    return out, tokens
