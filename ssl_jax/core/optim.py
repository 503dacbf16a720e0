"""The optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax


def schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine decay to 0 (or constant)."""
  o = config.optimizer
  if o.schedule == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1)),
         optax.constant_schedule(o.lr)], [o.warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      0.0, o.lr, o.warmup_steps, config.total_steps, end_value=0.0)


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices and kernels only: not on biases or norm
  scales (BERT's AdamWeightDecay excludes LayerNorm and bias)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _key_name(entry: Any) -> str:
  """One key-path entry as a string: a dict key, attribute name or index."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def layer_decay_scales(params: Any, layer_of: Callable[[tuple[str, ...]], int],
                       num_layers: int, decay: float) -> Any:
  """Per-leaf learning-rate scales for layer-wise decay (BEiT; the fine-tune
  of He et al.'s masked autoencoders).

  `layer_of(path)` maps a leaf's key path (a tuple of its dict keys, as
  strings) to its layer id in [0, num_layers + 1]: 0 the patch embedding and
  anything before the blocks, i in [1, num_layers] transformer block i, and
  num_layers + 1 the head and final norm. Layer id i gets the scale
  decay ** (num_layers + 1 - i): the embedding decay ** (num_layers + 1), the
  head 1. Returns a tree of Python floats with the structure of `params`
  (`optax.MaskedNode`s, having no leaves, are kept as they are).
  """
  def scale(path, _):
    layer = layer_of(tuple(_key_name(k) for k in path))
    if not 0 <= layer <= num_layers + 1:
      raise ValueError(f'layer id {layer} of {jax.tree_util.keystr(path)} is not in '
                       f'[0, {num_layers + 1}]')
    return float(decay) ** (num_layers + 1 - layer)
  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
  """Multiplies each update leaf by its scale; stateless.

  `scales` is a tree of scalars with the params' structure, or a callable
  applied to the updates it receives (same structure and key paths as the
  params, e.g. `functools.partial(layer_decay_scales, layer_of=...,
  num_layers=..., decay=...)`). Works inside `optax.multi_transform` and
  `optax.masked`: leaves of other groups arrive as `optax.MaskedNode` and are
  passed through (with a callable, the scales of such leaves are never
  computed). Scales are cast to each update's dtype.
  """
  masked = lambda x: isinstance(x, optax.MaskedNode)

  def update_fn(updates, state, params=None):
    del params
    tree = scales(updates) if callable(scales) else scales
    scaled = jax.tree.map(
        lambda u, s: u if masked(u) else u * jnp.asarray(s, u.dtype),
        updates, tree, is_leaf=masked)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


OPTIMIZERS = ('adamw', 'bert_adamw', 'lars')


def scale_by_adam_without_bias_correction(b1: float, b2: float, eps: float
                                          ) -> optax.GradientTransformation:
  """BERT's AdamWeightDecay direction m / (sqrt(v) + eps), with m and v the
  plain exponential moving averages of the gradient and its square: no
  1 / (1 - b^t) bias correction (optax.scale_by_adam always applies it), so
  the first update is (1 - b1) / sqrt(1 - b2) times Adam's: larger when b2
  is close to 1 (3.2x at b1=0.9, b2=0.999), until the averages forget
  their zero start."""

  def init_fn(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return out, optax.ScaleByAdamState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _base(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The configured optimizer (optimizer.name), before clipping and scales."""
  o = config.optimizer
  name = o.get('name', 'adamw')
  if name == 'lars':  # LARS (You et al., 2017), e.g. for linear probes at large batch
    return optax.lars(schedule(config), weight_decay=o.weight_decay,
                      weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask,
                      momentum=o.momentum)
  if name == 'bert_adamw':
    return optax.chain(scale_by_adam_without_bias_correction(o.b1, o.b2, o.eps),
                       optax.add_decayed_weights(o.weight_decay, decay_mask),
                       optax.scale_by_learning_rate(schedule(config)))
  return optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                     weight_decay=o.weight_decay, mask=decay_mask)


def make_optimizer(config: ml_collections.ConfigDict,
                   param_labels: Callable[[Any], Any] | None = None,
                   lr_scales: Any | None = None) -> optax.GradientTransformation:
  """`config.optimizer.name` (with optional clipping) from `config.optimizer`:
  'adamw' (optax's, with Adam's bias correction), 'bert_adamw' (BERT's
  AdamWeightDecay: the same decoupled decay, no bias correction) or 'lars'
  (momentum SGD with layer-wise trust ratios; `optimizer.momentum`).

  With `param_labels` (params -> tree of 'train' | 'probe' | 'frozen'), each
  group gets its own transformation: 'train' the configured optimizer (its
  clipping sees only these gradients), 'probe' a constant-rate Adam for the
  online probe (`config.online_probe.lr`), 'frozen' no update and no state.

  `lr_scales` (a tree of per-leaf scales with the params' structure, or a
  callable params -> that tree, e.g. `layer_decay_scales` with its other
  arguments bound, called on the updates as `scale_by_tree` says) multiplies the
  'train' group's updates after AdamW (and after clipping, which sees the
  unscaled gradients), which equals scaling each parameter's learning rate:
  the decoupled weight decay is scaled too, as in BEiT and He et al.'s code, where the
  decay is a per-group lr scale. The 'probe' group is never scaled. Without
  it the optimizer and its state are unchanged.
  """
  o = config.optimizer
  parts = []
  if o.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  parts.append(_base(config))
  if lr_scales is not None:
    parts.append(scale_by_tree(lr_scales))
  main = optax.chain(*parts)
  if param_labels is None:
    return main
  probe_lr = config.online_probe.lr if 'online_probe' in config else 0.0
  return optax.multi_transform(
      {'train': main, 'probe': optax.adam(probe_lr), 'frozen': optax.set_to_zero()},
      param_labels)
