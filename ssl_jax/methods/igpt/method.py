"""iGPT: generative pretraining on pixels quantised to a colour palette.

Per step, on the device: each image (resized to data.image_size) becomes a
sequence of palette tokens (palette.quantise, nearest centroid),
read in raster order or in one fixed random permutation (igpt.order). Then:

* 'ar': next-token cross-entropy; the model reads a start-of-sequence vector
  and the tokens shifted right, under a causal mask;
* 'bert': each token is masked independently with probability
  igpt.bert_mask_rate (15%), per example, from the step's key; the loss is
  the cross-entropy of the masked tokens, averaged per example, then over
  examples (as the released model does).

The palette is part of the parameters (`palette`, frozen: never updated), so
a checkpoint carries the palette it was trained with: probes, fine-tunes and
the sampler quantise and de-quantise with exactly those colours.

Representations: 'layer_0' .. 'layer_L', the normed output of each layer
averaged over positions (section "Fine-tuning": f^l = <n^l_i>_i); 'layer_L'
is the final norm's. BERT models are evaluated under igpt.bert_eval_masks
random masks (Figure 4's ensembling; 0: no mask), drawn afresh for every
batch from the key the evaluation passes (`represent_draws`): a classifier
averages its predicted probabilities over the masks (a linear probe or a
fine-tune trains on one fresh mask per example and step), and feature
probes read the features averaged over them (for a linear classifier,
averaging its logits).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ssl_jax import drawing, locking
from ssl_jax.config.checks import (ConfigError, boolean, is_int, one_of, positive_int, require,
                                   unit_interval)
from ssl_jax.methods.base import LossAux, Method
from ssl_jax.methods.igpt import palette as palette_lib
from ssl_jax.methods.igpt.model import GPT, SOS, shift_right
from ssl_jax.nn import attention
from ssl_jax.nn.losses import example_weights, weighted_mean
from ssl_jax.nn.pooling import pool

OBJECTIVES = ('ar', 'bert')
ORDERS = ('raster', 'random')
TOKEN_INITS = ('normal', 'palette')
EMBED_STD = 0.02  # the released model's token embedding initialisation


def permutation(order: str, n: int, seed: int) -> np.ndarray | None:
  """The fixed order in which positions are read: None for raster."""
  if order == 'raster':
    return None
  return np.random.default_rng(seed).permutation(n).astype(np.int32)


class IGPT(Method):
  """The method: init / loss / represent / generate (see ssl_jax.methods.base)."""

  name = 'igpt'
  self_supervised = True
  architecture_keys = ('data.image_size', 'igpt.objective', 'igpt.order', 'igpt.order_seed',
                       'igpt.vocab_size', 'igpt.model.width', 'igpt.model.num_layers',
                       'igpt.model.heads', 'igpt.model.mlp_ratio', 'igpt.model.context')
  # Checkpoints written before igpt.model.token_init existed used the
  # released model's normal initialisation.
  added_keys = {'igpt.model.token_init': 'normal', 'igpt.model.attention': 'xla'}
  frozen_params = ('palette',)
  generative_finetune = True   # Step 3: L_CLF + L_GEN
  draws_pictures = True
  samples = True

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
    g = config.igpt
    self.size = config.data.image_size
    self.n = self.size * self.size
    self.vocab = g.vocab_size
    self.bert = g.objective == 'bert'
    self.samples = not self.bert  # sampling needs the autoregressive model
    self.mask_rate = g.bert_mask_rate
    self.eval_masks = g.bert_eval_masks
    perm = permutation(g.order, self.n, g.order_seed)
    self.order = None if perm is None else jnp.asarray(perm)
    self.inverse = None if perm is None else jnp.asarray(np.argsort(perm).astype(np.int32))
    m = g.model
    self.token_init = m.token_init
    self.net = GPT(vocab=self.vocab, context=m.context, width=m.width,
                   num_layers=m.num_layers, heads=m.heads, causal=not self.bert,
                   mlp_ratio=m.mlp_ratio, remat=m.remat, dtype=dtype, attention=m.attention)
    # A pretraining config names its data: the palette is read (and must
    # exist) now; so does the backbone block of a from-scratch variant
    # (configs/igpt.py, finetune_config), for its dataset's default palette.
    # Other probes' backbone blocks have no data: their palette comes from
    # the checkpoint, or from igpt.palette.path when one is named.
    self.palette = None
    path = (palette_lib.resolve_path(config) if 'name' in config.data
            else g.palette.path or None)
    if path is not None and ('name' in config.data or _exists(path)):
      self.palette = palette_lib.load(path, self.vocab)
    self.palette_path = path

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """iGPT's keys: objective, reading order, palette, model and context."""
    g = 'igpt.'
    objective = one_of(config, g + 'objective', OBJECTIVES)
    one_of(config, g + 'order', ORDERS)
    require(config, g + 'order_seed', lambda v: is_int(v) and v >= 0, 'an integer >= 0')
    vocab = require(config, g + 'vocab_size', lambda v: is_int(v) and v >= 2,
                    'an integer >= 2 (the palette\'s number of colours; the paper: 512)')
    unit_interval(config, g + 'bert_mask_rate', open_=True)
    require(config, g + 'bert_eval_masks', lambda v: is_int(v) and v >= 0,
            'an integer >= 0 (masks averaged when evaluating a BERT model; 0: none)')
    p = g + 'palette.'
    require(config, p + 'path', lambda v: isinstance(v, str),
            "a palette file (.npy [vocab_size, 3]) or '' (the dataset's default palette)")
    boolean(config, p + 'fit_if_missing')
    positive_int(config, p + 'fit_images')
    require(config, p + 'fit_pixels', lambda v: is_int(v) and v >= vocab,
            f'an integer >= igpt.vocab_size={vocab}')
    positive_int(config, p + 'fit_iterations')
    require(config, p + 'fit_seed', lambda v: is_int(v) and v >= 0, 'an integer >= 0')
    m = g + 'model.'
    width = positive_int(config, m + 'width')
    for k in ('num_layers', 'mlp_ratio'):
      positive_int(config, m + k)
    one_of(config, m + 'token_init', TOKEN_INITS)
    require(config, m + 'heads', lambda v: is_int(v) and v > 0 and width % v == 0,
            f'a positive integer that divides model.width={width}')
    size = config.data.image_size
    context = positive_int(config, m + 'context')
    if size * size > context:
      fits = int(context ** 0.5)
      raise ConfigError(
          f'config.data.image_size={size} is not allowed with igpt.model.context={context}: '
          f'{size}x{size} = {size * size} tokens do not fit; use data.image_size <= {fits} or '
          f'model.context >= {size * size} (the paper: 32 -> 1024, 48 -> 2304, 64 -> 4096)')
    boolean(config, m + 'remat')
    attention.validate(config, m + 'attention')
    del objective

  @classmethod
  def validate_probe(cls, config: ml_collections.ConfigDict) -> None:
    if (config.init.workdir is None and not config.backbone.igpt.palette.path
        and 'name' not in config.backbone.data):
      raise ConfigError('config.backbone.igpt.palette.path=\'\' is not allowed with '
                        'init.workdir=None: a randomly initialised iGPT backbone needs a palette '
                        'file (a checkpoint carries its own). Fit one with python -m '
                        'ssl_jax.palette --config=configs/igpt.py:VARIANT (it prints the '
                        'path) and pass --config.backbone.igpt.palette.path=PATH (the '
                        'from-scratch variants name their dataset\'s default palette)')

  @classmethod
  def prepare(cls, config: ml_collections.ConfigDict) -> None:
    """Pretraining, or a from-scratch variant's backbone block (which names
    its data): fits the palette when its file is missing and
    igpt.palette.fit_if_missing is set. Loading it, and every error about
    it, happens when the method is built."""
    if 'name' not in config.data:  # a probe's backbone without data: a palette is named
      return
    path = palette_lib.resolve_path(config)
    if not config.igpt.palette.fit_if_missing or _exists(path):
      return
    # Concurrent first runs: one fits, the others wait and then find the file.
    with locking.Lease(os.path.dirname(path) or '.', os.path.basename(path),
                       what='palette directory', wait=True):
      if _exists(path):
        return
      t0 = time.perf_counter()
      logging.info('palette %s is missing: fitting k-means (k=%d) on %d images of %s',
                   path, config.igpt.vocab_size, config.igpt.palette.fit_images,
                   config.data.name)
      palette_lib.fit_for_config(config, path)
      logging.info('wrote palette %s (%.1f s)', path, time.perf_counter() - t0)

  # -- tokens ------------------------------------------------------------------

  def tokens(self, params: Any, images: jax.Array) -> jax.Array:
    """int32 [b, n]: palette tokens in reading order, for images in [0, 1]."""
    t = palette_lib.quantise(images, jax.lax.stop_gradient(params['palette']))
    t = t.reshape(t.shape[0], -1)
    return t if self.order is None else t[:, self.order]

  def to_images(self, params: Any, tokens: jax.Array) -> jax.Array:
    """Tokens [b, n] in reading order -> images [b, S, S, 3] in [0, 1]."""
    if self.order is not None:
      tokens = tokens[:, self.inverse]
    return palette_lib.dequantise(tokens, params['palette']).reshape(
        tokens.shape[0], self.size, self.size, 3)

  def bert_keep(self, rng: jax.Array, shape) -> jax.Array:
    """bool [b, n], False where masked (independently, rate bert_mask_rate)."""
    return ~jax.random.bernoulli(rng, self.mask_rate, shape)

  # -- the forward pass ----------------------------------------------------------

  def _apply(self, params, tokens, keep=None):
    """(logits [b, n, vocab], {layer_l: [b, n, d]})."""
    inputs = tokens if self.bert else shift_right(tokens)
    return self.net.apply({'params': params['net']}, inputs, keep)

  def generative_loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array
                      ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """(loss, metrics, pooled features by layer) of one forward pass."""
    tokens = self.tokens(params, batch['image'])
    b = tokens.shape[0]
    keep = self.bert_keep(rng, tokens.shape) if self.bert else None
    logits, intermediates = self._apply(params, tokens, keep)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [b, n]
    w = jnp.ones_like(xent) if keep is None else (~keep).astype(jnp.float32)
    counted = w.sum(axis=1)
    per_example = (xent * w).sum(axis=1) / jnp.maximum(counted, 1.0)
    ex = example_weights(batch, b) * (counted > 0)
    loss = weighted_mean(per_example, ex)
    correct = ((jnp.argmax(logits, -1) == tokens) * w).sum(1) / jnp.maximum(counted, 1.0)
    metrics = {'bits_per_token': loss / math.log(2.0),
               'token_accuracy': weighted_mean(correct, ex)}
    if self.bert:
      metrics['mask_rate'] = weighted_mean(counted / tokens.shape[1], ex)
    return loss, metrics, pool(intermediates)

  # -- the method interface ------------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, jax.Array], *,
           decoder: bool = True) -> Any:
    """{'net': the transformer, 'palette': [vocab, 3]}; `decoder` is unused
    (the output embedding stays: fine-tuning keeps the generative loss)."""
    del decoder
    inputs = jnp.zeros((batch['image'].shape[0], self.n), jnp.int32)
    keep = jnp.ones(inputs.shape, bool) if self.bert else None
    net = self.net.init(rng, inputs, keep)['params']
    colours = (jnp.asarray(self.palette) if self.palette is not None
               else jnp.zeros((self.vocab, 3), jnp.float32))
    if self.token_init == 'palette':
      net['wte'] = colour_embeddings(jax.random.fold_in(rng, 1), colours, net['wte'].shape[1])
    return {'net': net, 'palette': colours}

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
           train: bool = True, state: Any = None) -> tuple[jax.Array, LossAux]:
    del train  # no dropout (the paper uses none)
    loss, metrics, feats = self.generative_loss(params, batch, rng)
    return loss, LossAux(metrics, feats, state)

  @property
  def num_layers(self) -> int:
    return self.net.num_layers

  def representations(self) -> tuple[str, ...]:
    return tuple(f'layer_{i}' for i in range(self.net.num_layers + 1))

  def represent(self, params: Any, batch: dict[str, jax.Array], *, state: Any = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    """Every layer's pooled features [b, width]. BERT: averaged over the
    bert_eval_masks masks of `represent_draws` (from `rng`; a fixed key when
    None); while training (a fine-tune), under one fresh mask from `rng`, as
    the generative loss draws it (one forward pass per step)."""
    if mask_ratio:
      raise ValueError('iGPT reads whole images: mask_ratio must be 0')
    if train and self.bert:
      return self._pool_under_mask(params, self.tokens(params, batch['image']), rng)
    draws = self.represent_draws(params, batch, rng)
    return {k: sum(d[k] for d in draws) / len(draws) for k in draws[0]}

  def represent_draws(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
                      *, state: Any = None) -> list[dict[str, jax.Array]]:
    """AR, or BERT with bert_eval_masks=0: one draw, nothing masked. BERT:
    one draw per mask, mask j drawn per example from fold_in(rng, j)."""
    tokens = self.tokens(params, batch['image'])
    if not self.bert or self.eval_masks == 0:
      keep = jnp.ones(tokens.shape, bool) if self.bert else None
      return [pool(self._apply(params, tokens, keep)[1])]
    key = jax.random.key(0) if rng is None else rng
    return [self._pool_under_mask(params, tokens, jax.random.fold_in(key, j))
            for j in range(self.eval_masks)]

  def _pool_under_mask(self, params: Any, tokens: jax.Array, key: jax.Array
                       ) -> dict[str, jax.Array]:
    """Every layer's pooled features under one BERT mask drawn from `key`."""
    return pool(self._apply(params, tokens, self.bert_keep(key, tokens.shape))[1])

  def finetune_features(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
                        state: Any = None) -> tuple[dict[str, jax.Array], jax.Array]:
    """(features, generative loss) of one forward pass: fine-tuning
    optimises the classification and generative losses together."""
    loss, _, feats = self.generative_loss(params, batch, rng)
    return feats, loss

  # -- sampling -----------------------------------------------------------------

  def generate(self, params: Any, rng: jax.Array, prompt: jax.Array, *,
               temperature: float = 1.0) -> jax.Array:
    """Tokens [b, n] in reading order: `prompt` [b, m] (m may be 0) and the
    n - m tokens after it, each drawn from the model's distribution with
    `temperature`, one position at a time with a key/value cache."""
    if self.bert:
      raise ValueError('sampling needs an autoregressive model (igpt.objective=\'ar\')')
    b, m = prompt.shape
    if m >= self.n:
      return prompt
    net = self.net
    variables = {'params': params['net']}
    cache = net.init_cache(b, self.n, jnp.float32)
    inputs = jnp.concatenate([jnp.full((b, 1), SOS, jnp.int32), prompt.astype(jnp.int32)], 1)
    (logits, cache), _ = net.apply(variables, inputs, cache=cache, index=0)
    out = jnp.zeros((b, self.n), jnp.int32).at[:, :m].set(prompt)

    def draw(key, logits):
      if temperature == 0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
      return jax.random.categorical(key, logits / temperature).astype(jnp.int32)

    def body(i, carry):
      out, cache, last = carry
      token = draw(jax.random.fold_in(rng, i), last)
      out = out.at[:, i].set(token)
      (logits, cache), _ = net.apply(variables, token[:, None], cache=cache, index=i + 1)
      return out, cache, logits[:, 0]

    out, cache, last = jax.lax.fori_loop(m, self.n - 1, body, (out, cache, logits[:, -1]))
    return out.at[:, self.n - 1].set(draw(jax.random.fold_in(rng, self.n - 1), last))

  def sample_grids(self, params: Any, images: jax.Array, rng: jax.Array, *,
                   completions: int, temperature: float,
                   state: Any = None) -> dict[str, jax.Array]:
    """{'unconditional': uint8 [b, H, W', 3], 'completions': uint8 [b, H,
    W'', 3]}: rows of `completions` samples drawn from nothing (the
    start-of-sequence vector alone), and per image: the image | its palette
    version | the first half of the reading order given (the rest grey) |
    `completions` samples of the second half."""
    b = images.shape[0]
    half = self.n // 2
    keys = jax.random.split(rng, 2 * completions)
    empty = jnp.zeros((b, 0), jnp.int32)
    free = [self.to_images(params, self.generate(params, keys[i], empty,
                                                 temperature=temperature))
            for i in range(completions)]
    tokens = self.tokens(params, images)
    given = self.to_images(params, tokens.at[:, half:].set(0))
    shown = jnp.zeros((b, self.n), bool).at[:, :half].set(True)
    if self.inverse is not None:
      shown = shown[:, self.inverse]
    given = jnp.where(shown.reshape(given.shape[:3])[..., None], given, 0.5)
    completed = [self.to_images(params, self.generate(
        params, keys[completions + i], tokens[:, :half], temperature=temperature))
                 for i in range(completions)]
    return {'unconditional': drawing.panels(free),
            'completions': drawing.panels([images, self.to_images(params, tokens), given]
                                          + completed)}

  def pictures(self, params: Any, images: jax.Array, rng: jax.Array, *,
               state: Any = None) -> jax.Array:
    """uint8 [b, H', W', 3]. AR: image | quantised | the first half of the
    reading order given, the rest sampled (temperature 1) | greedy.
    BERT: image | quantised | masked (grey) | the model's most likely
    colours at the masked positions."""
    tokens = self.tokens(params, images)
    rows = [images, self.to_images(params, tokens)]
    if self.bert:
      keep = self.bert_keep(rng, tokens.shape)
      logits = self._apply(params, tokens, keep)[0]
      guess = jnp.where(keep, tokens, jnp.argmax(logits, -1).astype(jnp.int32))
      masked = self.to_images(params, tokens)
      grey = jnp.full_like(masked, 0.5)
      keep_img = keep if self.order is None else keep[:, self.inverse]
      masked = jnp.where(keep_img.reshape(masked.shape[:3])[..., None], masked, grey)
      rows += [masked, self.to_images(params, guess)]
    else:
      prompt = tokens[:, :self.n // 2]
      rows += [self.to_images(params, self.generate(params, rng, prompt)),
               self.to_images(params, self.generate(params, rng, prompt, temperature=0.0))]
    return drawing.panels(rows)


def colour_embeddings(rng: jax.Array, colours: jax.Array, width: int) -> jax.Array:
  """[vocab, width]: each palette colour (RGB in [-1, 1]) through one random
  linear map, rescaled to the normal initialisation's std (0.02): colours
  that are close start with close embeddings (igpt.model.token_init=
  'palette')."""
  e = colours.astype(jnp.float32) @ jax.random.normal(rng, (colours.shape[1], width))
  return e * (EMBED_STD / jnp.maximum(e.std(), 1e-12))


def _exists(path: str) -> bool:
  import tensorflow as tf
  return tf.io.gfile.exists(path)
