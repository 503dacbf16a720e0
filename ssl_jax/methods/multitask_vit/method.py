"""The multi-task ViT ("Pretraining Vision Transformer via Multi-Task
Self-Supervision"): image-level, single-patch and multi-patch tasks trained
at once on one ViT, every destructive transformation kept at patch level.

Per example, on the device, from the step's key (ssl_jax.methods.
multitask_vit.tasks has the order and what each transformation touches):
two augmented views (one when the contrastive task is off); each view
turned by a random quarter turn (rotation); relative-position pairs
jittered; disjoint sets of patches turned grayscale (colorization), masked
(inpainting) and permuted (jigsaw). One forward pass per view reads every
task's answer from its token: [CT] (contrastive, NT-Xent over the global
batch), the rotation token (4-way), the grayscale patches' tokens (their
colours), the masked patches' tokens (their normalised pixels), the
pairs' tokens (8-way offset), the moved patches' tokens (their original
cell). `passes='separate'` is the report's alternative, the control for
its claim: one forward pass per task, each view carrying only that task's
transformation.

The loss: fixed weights (sum of w_t L_t) or SiT's learned uncertainty
weighting (sum of c_t exp(-s_t) L_t + s_t / 2, s_t a parameter per task,
c_t = 1/2 for the regressions). Every `diagnostics_every` steps the step
also takes each task's gradient on the shared backbone alone (one backward
pass per task) and logs its norm and the cosines between tasks; the values
are carried in the method's state between those steps.

See configs/multitask_vit.py for every choice where the report is silent.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl_jax import drawing
from ssl_jax.config.checks import ConfigError, construct, is_int, is_number, one_of, require
from ssl_jax.data import ViewSpec
from ssl_jax.methods.base import LossAux, Method
from ssl_jax.methods.multitask_vit import tasks as tasks_lib
from ssl_jax.methods.multitask_vit.model import CLS, CT, PREFIX, ROT, MultiTaskViT
from ssl_jax.nn import colour as colour_lib
from ssl_jax.nn import attention, contrastive, vit
from ssl_jax.nn.losses import example_weights, weighted_mean
from ssl_jax.nn.patch_context import first_view, flat_views
from ssl_jax.nn.patches import filled_image, gather, to_signed, unpatchify

TASKS = tasks_lib.TASKS
PASSES = ('one', 'separate')
WEIGHTING = ('fixed', 'uncertainty')
COLOUR_TARGETS = ('pixels', 'mean')
SHORTCUTS = ('literal', 'withheld')
REGRESSIONS = ('inpainting',)  # and colorization with target='mean'
AUGMENT = 'the fields of ssl_jax.data.ViewSpec (configs/multitask_vit.py: augment)'
PAIR_AUGMENT = 'the fields of ssl_jax.methods.multitask_vit.tasks.PairAugment'


def parse_tasks(value: str) -> tuple[str, ...]:
  """'contrastive,rotation' -> the enabled tasks in TASKS order (ValueError
  names an unknown or repeated one)."""
  names = [t.strip() for t in str(value).split(',') if t.strip()]
  unknown = [t for t in names if t not in TASKS]
  if unknown or len(set(names)) != len(names) or not names:
    raise ValueError(f'{value!r}: a comma-separated, non-empty set of {", ".join(TASKS)}'
                     + (f' ({", ".join(unknown)} unknown)' if unknown else ''))
  return tuple(t for t in TASKS if t in names)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over every axis but the first (examples) of the integer-label CE."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return ce.reshape(ce.shape[0], -1).mean(-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return hit.reshape(hit.shape[0], -1).mean(-1)


class MultiTaskViTMethod(Method):
  name = 'multitask_vit'
  added_keys = {'multitask_vit.model.attention': 'xla'}  # the kernel, not the network
  # The ViT's shapes only: a probe or fine-tune reads the ViT (no head, no
  # mask or no-position token), whatever tasks, weighting or regularisation
  # trained it; the learned position embeddings fix the grid.
  architecture_keys = ('data.image_size', 'multitask_vit.patch_size', 'multitask_vit.model.width',
                       'multitask_vit.model.depth', 'multitask_vit.model.heads',
                       'multitask_vit.model.mlp_ratio')
  layer_decay = True
  draws_pictures = True

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
    m = config.multitask_vit
    size = config.data.image_size
    self.patch = m.patch_size
    self.grid = (size // self.patch, size // self.patch)
    self.num_cells = self.grid[0] * self.grid[1]
    self.tasks = parse_tasks(m.tasks)
    self.one_pass = m.get('passes', 'one') == 'one'
    self.weighting = m.get('weighting', 'fixed')
    self.weights = {t: float(m[t].weight) for t in self.tasks}
    self.temperature = float(m.contrastive.temperature)
    self.colour_target = m.colorization.target
    self.resolution = m.colorization.resolution
    self.bins = jnp.asarray(colour_lib.ab_bins(float(m.colorization.bin_size)))
    self.diagnostics_every = int(m.get('diagnostics_every', 0))
    self.spec = tasks_lib.Spec(
        grid=self.grid, patch=self.patch, num_pairs=m.relative_position.pairs,
        colour_patches=m.colorization.patches, inpaint_patches=m.inpainting.patches,
        jigsaw_patches=m.jigsaw.patches,
        withhold_positions=m.relative_position.shortcut == 'withheld',
        pair_augment=construct(config, 'multitask_vit.relative_position.augment',
                               tasks_lib.PairAugment, PAIR_AUGMENT))
    colour_out = 2 if self.colour_target == 'mean' else (
        self.resolution ** 2 * self.bins.shape[0])
    out = {'contrastive': m.contrastive.dim, 'rotation': 4, 'colorization': colour_out,
           'inpainting': self.patch * self.patch * 3, 'relative_position': 8,
           'jigsaw': self.num_cells}
    md = m.model
    self.depth = md.depth
    self.net = MultiTaskViT(
        num_patches=self.num_cells, width=md.width, depth=md.depth, heads=md.heads,
        heads_out=tuple((t, out[t]) for t in self.tasks), head_width=md.head_width,
        mlp_ratio=md.mlp_ratio, dropout=md.dropout, drop_path=md.drop_path,
        withhold_positions=self.spec.withhold_positions,
        num_log_vars=len(self.tasks) if self.weighting == 'uncertainty' else 0,
        remat=md.get('remat', False), dtype=dtype, attention=md.attention)

  # -- configuration --------------------------------------------------------

  @classmethod
  def validate_backbone(cls, config: ml_collections.ConfigDict) -> None:
    """The network's keys (a probe or fine-tune draws no task)."""
    size = config.data.image_size
    patch = require(config, 'multitask_vit.patch_size',
                    lambda v: is_int(v) and v > 0 and size % v == 0 and size // v >= 2,
                    f'a positive integer dividing data.image_size={size} into a grid of '
                    'at least 2 x 2')
    m = 'multitask_vit.model.'
    width = require(config, m + 'width', lambda v: is_int(v) and v > 0, 'a positive integer')
    require(config, m + 'heads', lambda v: is_int(v) and v > 0 and width % v == 0,
            f'a positive integer dividing model.width={width}')
    for key in ('depth', 'mlp_ratio', 'head_width'):
      require(config, m + key, lambda v: is_int(v) and v > 0, 'a positive integer')
    for key in ('dropout', 'drop_path'):
      require(config, m + key, lambda v: is_number(v) and 0 <= v < 1, 'a number in [0, 1)')
    if attention.validate(config, m + 'attention') != 'xla' and config.multitask_vit.model.dropout:
      raise ConfigError(f'config.{m}attention={config.multitask_vit.model.attention!r} is not '
                        f'allowed with {m}dropout={config.multitask_vit.model.dropout}: the '
                        "fused kernels have no attention dropout; use attention='xla' or "
                        'dropout=0')
    try:
      parse_tasks(config.multitask_vit.tasks)
    except ValueError as e:
      raise cls._error('multitask_vit.tasks', e) from None
    one_of(config, 'multitask_vit.weighting', WEIGHTING)
    one_of(config, 'multitask_vit.colorization.target', COLOUR_TARGETS)
    require(config, 'multitask_vit.colorization.resolution',
            lambda v: is_int(v) and v > 0 and patch % v == 0,
            f'a positive integer dividing patch_size={patch}')
    require(config, 'multitask_vit.colorization.bin_size',
            lambda v: is_number(v) and 1 <= v <= 50, 'a number in [1, 50] (ab units)')
    require(config, 'multitask_vit.contrastive.dim', lambda v: is_int(v) and v > 0,
            'a positive integer')
    one_of(config, 'multitask_vit.relative_position.shortcut', SHORTCUTS)

  @classmethod
  def _error(cls, key: str, e: Exception) -> ConfigError:
    return ConfigError(f'config.{key} is not allowed: {e}')

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """The backbone's keys, then the tasks' counts, weights and options."""
    cls.validate_backbone(config)
    m = config.multitask_vit
    enabled = parse_tasks(m.tasks)
    n = (config.data.image_size // m.patch_size) ** 2
    one_of(config, 'multitask_vit.passes', PASSES)
    for t in TASKS:
      require(config, f'multitask_vit.{t}.weight', lambda v: is_number(v) and v >= 0,
              'a number >= 0 (the fixed weighting\'s; uncertainty weighting learns its own)')
    require(config, 'multitask_vit.contrastive.temperature', lambda v: is_number(v) and v > 0,
            'a number > 0')
    pairs = require(config, 'multitask_vit.relative_position.pairs',
                    lambda v: is_int(v) and v >= 1, 'an integer >= 1')
    construct(config, 'multitask_vit.relative_position.augment', tasks_lib.PairAugment,
              PAIR_AUGMENT)
    counts = {}
    for t, key, low in (('colorization', 'colorization.patches', 1),
                        ('inpainting', 'inpainting.patches', 1),
                        ('jigsaw', 'jigsaw.patches', 2)):
      counts[t] = require(config, f'multitask_vit.{key}', lambda v, lo=low: is_int(v) and v >= lo,
                          f'an integer >= {low}')
    used = sum(counts[t] for t in counts if t in enabled)
    free = n - (2 * pairs if 'relative_position' in enabled else 0)
    if used > free:
      raise cls._error('multitask_vit.tasks', ValueError(
          f'the enabled patch sets take {used} patches but only {free} of the {n} are free '
          f'(the relative-position pairs take up to {2 * pairs}): lower '
          'colorization.patches / inpainting.patches / jigsaw.patches or relative_position.pairs'))
    require(config, 'multitask_vit.diagnostics_every', lambda v: is_int(v) and v >= 0,
            'an integer >= 0 (0: no per-task gradient diagnostics)')
    construct(config, 'multitask_vit.augment', ViewSpec, AUGMENT)
    require(config, 'online_probe.representation',
            lambda v: v in ('', 'cls', 'contrastive_token', 'rotation_token', 'tokens'),
            "'cls', 'contrastive_token', 'rotation_token' or 'tokens' (what the training "
            "pass offers)")

  @classmethod
  def views(cls, config: ml_collections.ConfigDict):
    """Two views when the contrastive task is on (its pairs), else one."""
    spec = construct(config, 'multitask_vit.augment', ViewSpec, AUGMENT)
    return (spec,) * (2 if 'contrastive' in parse_tasks(config.multitask_vit.tasks) else 1)

  # -- passes and losses ------------------------------------------------------

  def _passes(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(transformations applied, heads read) of each forward pass."""
    if self.one_pass:
      return [(tuple(t for t in self.tasks if t in tasks_lib.TRANSFORMS), self.tasks)]
    return [(tuple(t for t in (task,) if t in tasks_lib.TRANSFORMS), (task,))
            for task in self.tasks]

  def _cells(self, view: tasks_lib.View, heads: tuple[str, ...]) -> dict[str, Any]:
    where = {'contrastive': None, 'rotation': None, 'colorization': view.colour,
             'inpainting': view.inpaint, 'jigsaw': view.jigsaw,
             'relative_position': None if view.pairs is None else (view.pairs.anchor,
                                                                   view.pairs.neighbour)}
    return {t: where[t] for t in heads}

  def _inputs(self, view: tasks_lib.View) -> jax.Array:
    n = view.inputs.shape[0]
    return to_signed(view.inputs).reshape(n, self.num_cells, -1)

  def _colour_targets(self, view: tasks_lib.View) -> jax.Array:
    return tasks_lib.colour_targets(gather(view.pixels, view.colour), self.colour_target,
                                    self.resolution, self.bins)

  def _task_loss(self, task: str, out: jax.Array, view: tasks_lib.View, views: int,
                 weights: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(weighted mean loss, metrics) of one task from its head's output."""
    if task == 'contrastive':
      loss, parts = contrastive.nt_xent(out, views, self.temperature, weights)
      return loss, {'top1': parts['top1']}
    if task == 'inpainting':
      target = tasks_lib.normalised_pixels(gather(view.pixels, view.inpaint))
      per = jnp.square(out.astype(jnp.float32) - target).reshape(out.shape[0], -1).mean(-1)
      return weighted_mean(per, weights), {}
    if task == 'colorization':
      target = self._colour_targets(view)
      if self.colour_target == 'mean':
        per = jnp.square(out.astype(jnp.float32) - target).reshape(out.shape[0], -1).mean(-1)
        return weighted_mean(per, weights), {}
      logits = out.reshape(target.shape).astype(jnp.float32)
      per = optax.softmax_cross_entropy(logits, target).reshape(out.shape[0], -1).mean(-1)
      hits = accuracy(logits, jnp.argmax(target, -1))
      return weighted_mean(per, weights), {'accuracy': weighted_mean(hits, weights)}
    labels = {'rotation': view.quarters, 'jigsaw': view.jigsaw_source,
              'relative_position': None if view.pairs is None else view.pairs.label}[task]
    return (weighted_mean(cross_entropy(out, labels), weights),
            {'accuracy': weighted_mean(accuracy(out, labels), weights)})

  def _losses(self, params: Any, images: jax.Array, views: int, weights: jax.Array,
              rng: jax.Array, train: bool):
    """({task: loss}, metrics, tokens of the first pass, the uncertainty
    weighting's log variances or None) for views [n, S, S, 3]."""
    k_view, k_dropout = jax.random.split(rng)
    losses, metrics, first_tokens, log_vars = {}, {}, None, None
    for i, (active, heads) in enumerate(self._passes()):
      view = tasks_lib.corrupt(jax.random.fold_in(k_view, i), images, self.spec, active)
      out, tokens = self.net.apply(
          {'params': params}, self._inputs(view), self._cells(view, heads),
          masked=view.masked, unpositioned=view.unpositioned, train=train,
          rngs={'dropout': jax.random.fold_in(k_dropout, i)})
      first_tokens = tokens if first_tokens is None else first_tokens
      log_vars = out.get('log_vars')
      for t in heads:
        losses[t], parts = self._task_loss(t, out[t], view, views, weights)
        metrics.update({f'{t}/{k}': v for k, v in parts.items()})
    return losses, metrics, first_tokens, log_vars

  def _combine(self, losses: dict[str, jax.Array], s: jax.Array | None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The total loss from the task losses; s: the uncertainty weighting's
    log variances (None: fixed weights)."""
    if s is None:
      return sum(self.weights[t] * losses[t] for t in self.tasks), {}
    total, metrics = 0.0, {}
    for i, t in enumerate(self.tasks):
      regression = t in REGRESSIONS or (t == 'colorization' and self.colour_target == 'mean')
      scale = (0.5 if regression else 1.0) * jnp.exp(-s[i])
      total = total + scale * losses[t] + 0.5 * s[i]
      metrics[f'{t}/weight'] = scale
    return total, metrics

  def _diagnostics(self, params: Any, images, views, weights, rng, train):
    """Per task: the norm of its loss's gradient on the backbone ('vit'),
    and the cosines between tasks ([T], [T, T]); no gradient flows back."""
    fixed = jax.lax.stop_gradient(params)

    def per_task(vit):
      losses = self._losses(dict(fixed, vit=vit), images, views, weights, rng, train)[0]
      return jnp.stack([losses[t] for t in self.tasks])

    # One forward pass, then one backward pass per task in sequence (lax.map,
    # not a vmapped jacobian: one task's backward activations live at a
    # time); the T gradients themselves are kept (4 T P bytes for P
    # backbone parameters: 2 GB for ViT-B's 86M and 6 tasks).
    _, pullback = jax.vjp(per_task, fixed['vit'])
    grads = jax.lax.map(lambda e: pullback(e)[0], jnp.eye(len(self.tasks)))
    gram = sum(jnp.einsum('ti,si->ts', g.reshape(len(self.tasks), -1).astype(jnp.float32),
                          g.reshape(len(self.tasks), -1).astype(jnp.float32))
               for g in jax.tree.leaves(grads))
    norm = jnp.sqrt(jnp.diagonal(gram))
    return norm, gram / jnp.maximum(norm[:, None] * norm[None, :], 1e-12)

  # -- the method interface ---------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *, decoder: bool = True) -> Any:
    images, _ = flat_views(batch['image'])
    if not decoder:
      view = tasks_lib.corrupt(rng, images, self.spec, ())
      return self.net.init(rng, self._inputs(view), train=False,
                           method=MultiTaskViT.encode)['params']
    active = tuple(t for t in self.tasks if t in tasks_lib.TRANSFORMS)
    view = tasks_lib.corrupt(rng, images, self.spec, active)
    return self.net.init(rng, self._inputs(view), self._cells(view, self.tasks),
                         masked=view.masked, unpositioned=view.unpositioned,
                         train=False)['params']

  def init_state(self, rng: jax.Array, batch: dict[str, jax.Array], params: Any) -> Any:
    del rng, batch, params
    if not self.diagnostics_every:
      return {}
    t = len(self.tasks)
    return {'step': jnp.zeros((), jnp.int32), 'grad_norm': jnp.zeros((t,), jnp.float32),
            'grad_cos': jnp.eye(t, dtype=jnp.float32)}

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None) -> tuple[jax.Array, LossAux]:
    images, views = flat_views(batch['image'])
    n = images.shape[0]
    weights = jnp.repeat(example_weights(batch, n // views), views)
    losses, metrics, tokens, log_vars = self._losses(params, images, views, weights, rng,
                                                     train)
    total, weight_metrics = self._combine(losses, log_vars)
    metrics.update(weight_metrics)
    metrics.update({f'{t}/loss': losses[t] for t in self.tasks})
    if self.diagnostics_every:
      due = state['step'] % self.diagnostics_every == 0
      norm, cos = jax.lax.cond(
          due, lambda: self._diagnostics(params, images, views, weights, rng, train),
          lambda: (state['grad_norm'], state['grad_cos']))
      state = {'step': state['step'] + 1, 'grad_norm': norm, 'grad_cos': cos}
      for i, t in enumerate(self.tasks):
        metrics[f'{t}/backbone_grad_norm'] = norm[i]
        for j in range(i + 1, len(self.tasks)):
          metrics[f'grad_cosine/{t}-{self.tasks[j]}'] = cos[i, j]
    grid_tokens = tokens[:, len(PREFIX):]
    features = {'cls': tokens[:, CLS], 'contrastive_token': tokens[:, CT],
                'rotation_token': tokens[:, ROT], 'tokens': grid_tokens.mean(1)}
    features = {k: first_view(v, views).astype(jnp.float32) for k, v in features.items()}
    return total, LossAux(metrics, features, state)

  def representations(self) -> tuple[str, ...]:
    return (('cls', 'contrastive_token', 'rotation_token', 'tokens')
            + tuple(f'layer_{k + 1}' for k in range(self.depth)))

  def represent(self, params: Any, batch: dict[str, jax.Array], *, state: Any = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    """'cls', 'contrastive_token', 'rotation_token': those tokens' outputs;
    'tokens': the patch tokens' outputs averaged; 'layer_k': block k's patch
    tokens averaged (before the final norm). Whole images, no task's
    transformation."""
    view = tasks_lib.corrupt(jax.random.key(0), batch['image'], self.spec, ())
    tokens, layers = self.net.apply(
        {'params': params}, self._inputs(view), train=train, method=MultiTaskViT.encode,
        rngs={'dropout': jax.random.key(0) if rng is None else rng})
    k = len(PREFIX)
    out = {'cls': tokens[:, CLS], 'contrastive_token': tokens[:, CT],
           'rotation_token': tokens[:, ROT], 'tokens': tokens[:, k:].mean(1)}
    out.update({name: x[:, k:].mean(1) for name, x in layers.items()})
    return {name: x.astype(jnp.float32) for name, x in out.items()}

  @property
  def num_blocks(self) -> int:
    return self.depth

  def layer_of(self, path: tuple[str, ...]) -> int:
    """0: the embeddings (patch, position, prefix, mask and no-position
    tokens); k: encoder block k; depth + 1: the final norm."""
    return vit.layer_of(path, self.depth)

  def pictures(self, params: Any, images: jax.Array, rng: jax.Array, *,
               state: Any = None) -> jax.Array:
    """uint8 [b, H', W', 3] panels (an absent task's left out): the turned
    view | what the model reads (grayscale, grey masked, moved and jittered
    patches) | masked cells filled with the inpainting prediction
    (de-normalised with the true patch's mean and spread) | grayscale cells
    coloured with the predicted ab (the most likely bin per cell, or the
    mean) on their own lightness | relative position: the pairs bright, the
    rest dimmed, each anchor's predicted neighbour cell tinted green (right)
    or red (wrong) | jigsaw: each moved patch put back where the head says
    it came from (the view restored where it is right) | rotation: the view
    turned back by the predicted quarter turns (upright where right)."""
    active = tuple(t for t in self.tasks if t in tasks_lib.TRANSFORMS)
    view = tasks_lib.corrupt(rng, images, self.spec, active)
    out, _ = self.net.apply({'params': params}, self._inputs(view),
                            self._cells(view, self.tasks), masked=view.masked,
                            unpositioned=view.unpositioned, train=False)
    b, n, p = view.pixels.shape[:3]
    shown = view.inputs
    if view.masked is not None:
      shown = jnp.where(view.masked[..., None, None, None], 0.5, shown)
    rows = [self._image(view.pixels), self._image(shown)]
    if 'inpainting' in out:
      truth = gather(view.pixels, view.inpaint).reshape(b, -1, p * p * 3)
      mean, std = truth.mean(-1, keepdims=True), jnp.sqrt(truth.var(-1, keepdims=True) + 1e-6)
      guess = jnp.clip(out['inpainting'] * std + mean, 0, 1).reshape(b, -1, p, p, 3)
      rows.append(filled_image(view.pixels, view.inpaint, guess, self.grid))
    if 'colorization' in out:
      rows.append(filled_image(view.pixels, view.colour, self._coloured(out['colorization'],
                                                                         view), self.grid))
    if 'relative_position' in out:
      rows.append(self._pairs_picture(view, out['relative_position']))
    if 'jigsaw' in out:  # each moved patch put where the head says it came from
      guess = jnp.argmax(out['jigsaw'], -1)
      rows.append(self._image(tasks_lib.scatter_cells(view.inputs, guess,
                                                 gather(view.inputs, view.jigsaw))))
    if 'rotation' in out:  # the view turned back by the predicted rotation
      back = (4 - jnp.argmax(out['rotation'], -1)) % 4
      rows.append(tasks_lib.rotate(rows[0], back))
    return drawing.panels(rows)

  def _coloured(self, predicted: jax.Array, view: tasks_lib.View) -> jax.Array:
    """The grayscale patches [b, kc, p, p, 3] with their predicted ab on
    their true lightness."""
    truth = gather(view.pixels, view.colour)
    b, k, p = truth.shape[:3]
    lab = colour_lib.rgb_to_lab(truth)
    if self.colour_target == 'mean':
      ab = jnp.broadcast_to((100.0 * predicted)[:, :, None, None, :], (b, k, p, p, 2))
    else:
      r = self.resolution
      logits = predicted.reshape(b, k, r * r, -1)
      ab = self.bins[jnp.argmax(logits, -1)].reshape(b, k, r, 1, r, 1, 2)
      ab = jnp.broadcast_to(ab, (b, k, r, p // r, r, p // r, 2)).reshape(b, k, p, p, 2)
    return colour_lib.lab_to_rgb(jnp.concatenate([lab[..., :1], ab], -1))

  def _pairs_picture(self, view: tasks_lib.View, logits: jax.Array) -> jax.Array:
    b, n, p = view.pixels.shape[:3]
    pairs = view.pairs
    gw = self.grid[1]
    guess = jnp.argmax(logits, -1)
    offsets = jnp.asarray(tasks_lib.OFFSETS)[guess]  # [b, P, 2]
    rows = jnp.clip(pairs.anchor // gw + offsets[..., 0], 0, self.grid[0] - 1)
    cols = jnp.clip(pairs.anchor % gw + offsets[..., 1], 0, gw - 1)
    predicted = rows * gw + cols
    right = guess == pairs.label
    dim = jnp.full((b, n), 0.3)
    dim = dim.at[jnp.arange(b)[:, None], pairs.anchor].set(1.0)
    dim = dim.at[jnp.arange(b)[:, None], pairs.neighbour].set(1.0)
    x = view.pixels * dim[..., None, None, None]
    tint = jnp.where(right[..., None], jnp.array([0.0, 1.0, 0.0]), jnp.array([1.0, 0.0, 0.0]))
    cells = gather(x, predicted)
    x = x.at[jnp.arange(b)[:, None], predicted].set(0.5 * cells + 0.5 * tint[:, :, None, None])
    return self._image(x)

  def _image(self, patches: jax.Array) -> jax.Array:
    b, n, p = patches.shape[:3]
    return unpatchify(patches.reshape(b, n, -1), self.grid, p)
