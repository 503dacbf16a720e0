"""Attention implementations: the reference and the platforms' fused kernels.

A method's `model.attention` key chooses (the transformer methods: MAE, the
multi-task ViT, PatchFormer, RandSAC, iGPT):

  'xla'     the reference: softmax(q k^T / sqrt(d)) v written out (flax's
            dot_product_attention, or jax.nn.dot_product_attention with
            implementation='xla'), on every platform; masks, biases and
            attention dropout allowed. The default, and the program model
            FLOPs are counted on (ssl_jax.core.flops).
  'cudnn'   cuDNN's fused attention on NVIDIA GPUs (jax.nn.dot_product_attention
            with implementation='cudnn'): bfloat16 / float16 only, head
            dimension a multiple of 8 up to 128 (256 on Hopper), boolean
            masks; no attention dropout. Odd token counts are padded by one
            (`_even`: JAX refuses them under differentiation).
  'splash'  Pallas splash attention on TPU (jax.experimental.pallas.ops.tpu):
            token counts padded to the kernel's block size (128) with the
            padded keys masked out; no per-example mask, no bias, no
            attention dropout. Off TPU the kernel's own program runs
            interpreted (slow; a warning says so): that is how the tests
            check it against the reference on CPU. Under jit over a sharded batch, XLA places
            the kernel; a shard_map over the batch axes is the next step
            where a TPU profile shows a gather around it.

Each is a drop-in `attention_fn` for flax's MultiHeadDotProductAttention
(query, key, value [batch, length, heads, head_dim]); `fused` is the same
without flax's calling convention (iGPT calls it directly).
"""

from __future__ import annotations

import functools
import math
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ssl_jax.config.checks import require

IMPLEMENTATIONS = ('xla', 'cudnn', 'splash')
SPLASH_BLOCK = 128


def attention_fn(implementation: str, interpret: bool = False):
  """A flax `attention_fn` for `implementation` (one of IMPLEMENTATIONS)."""
  if implementation == 'xla':
    return nn.dot_product_attention
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'attention={implementation!r}: one of {IMPLEMENTATIONS}')

  def fn(query, key, value, bias=None, mask=None, broadcast_dropout=True, dropout_rng=None,
         dropout_rate=0.0, deterministic=False, dtype=None, precision=None, **unused):
    del broadcast_dropout, dropout_rng, precision, unused
    if dropout_rate > 0 and not deterministic:
      raise ValueError(f'attention={implementation!r} has no attention dropout '
                       f'(dropout_rate={dropout_rate}): use attention=\'xla\'')
    out = fused(query, key, value, implementation, mask=mask, bias=bias, interpret=interpret)
    return out.astype(dtype) if dtype is not None else out
  return fn


def fused(query, key, value, implementation: str, *, mask=None, bias=None,
          is_causal: bool = False, interpret: bool = False) -> jax.Array:
  """softmax(q k^T / sqrt(d) [+ bias], masked) v with `implementation`;
  query [b, t, h, d], key and value [b, s, h, d] -> [b, t, h, d]."""
  if implementation == 'cudnn':
    return _even(query, key, value, mask, bias, is_causal, implementation)
  if implementation == 'xla':
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                        is_causal=is_causal, implementation=implementation)
  if implementation != 'splash':
    raise ValueError(f'attention={implementation!r}: one of {IMPLEMENTATIONS}')
  if mask is not None or bias is not None:
    raise ValueError("attention='splash' takes no per-example mask or bias (its masks are "
                     "static): use attention='xla' or 'cudnn' for this model")
  return _splash(query, key, value, is_causal, interpret)


def _even(query, key, value, mask, bias, is_causal: bool, implementation: str) -> jax.Array:
  """jax.nn.dot_product_attention with odd token counts padded by one.

  Under differentiation JAX's cuDNN path refuses an odd query or key length
  ('Unsupported sequence length Q 197, KV 197': its forward rule takes the
  placeholder of an absent bias for a bias, and cuDNN's kernel takes a bias
  only at even lengths; seen with jax 0.10.2 and 0.11.2 on an H200), which
  is every ViT with a [CLS] token. The padded key is left out through
  key_value_seq_lengths (no mask tensor) or, where the model passes a mask
  or bias, through the mask; the padded query row attends like the others
  and is dropped. `implementation` is a parameter so that the CPU tests run
  this padding on the reference.
  """
  t, s = query.shape[1], key.shape[1]
  pt, ps = t + t % 2, s + s % 2
  lengths = None
  if (pt, ps) != (t, s):
    query, key, value = _pad(query, pt), _pad(key, ps), _pad(value, ps)
    if mask is None and bias is None:
      lengths = jnp.full((query.shape[0],), s, jnp.int32)
    else:  # [b|1, h|1, t|1, s|1]: pad the dimensions that are not broadcast
      keys = (jnp.arange(ps) < s)[None, None, None, :]
      pad = lambda x, fill: jnp.pad(  # noqa: E731
          x, ((0, 0), (0, 0), (0, (pt - t) * (x.shape[2] == t)),
              (0, (ps - s) * (x.shape[3] == s))), constant_values=fill)
      mask = keys if mask is None else pad(mask, False) & keys
      bias = None if bias is None else pad(bias, 0)
  out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, is_causal=is_causal,
                                     key_value_seq_lengths=lengths,
                                     implementation=implementation)
  return out[:, :t]


@functools.cache
def _splash_kernel(heads: int, q_len: int, kv_len: int, padded_q: int, padded_kv: int,
                   causal: bool, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as kernel, splash_attention_mask as masks)
  allowed = np.zeros((padded_q, padded_kv), bool)
  allowed[:, :kv_len] = True  # padded keys are never attended to
  if causal:
    allowed &= np.tril(np.ones((padded_q, padded_kv), bool), k=kv_len - q_len)
  allowed[q_len:] = True  # padded queries: any finite row, discarded
  mask = masks.MultiHeadMask([masks.NumpyMask(allowed) for _ in range(heads)])
  with jax.ensure_compile_time_eval():  # concrete mask tables, reusable by every trace
    return kernel.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _pad(x: jax.Array, length: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _splash(query, key, value, causal: bool, interpret: bool) -> jax.Array:
  if not interpret and jax.default_backend() != 'tpu':
    logging.log_first_n(logging.WARNING, "attention='splash' off TPU (%s): the Pallas kernel "
                        'runs interpreted, slowly; use it on TPU', 1, jax.default_backend())
    interpret = True
  b, t, h, d = query.shape
  s = key.shape[1]
  pt, ps = (SPLASH_BLOCK * math.ceil(n / SPLASH_BLOCK) for n in (t, s))
  run = _splash_kernel(h, t, s, pt, ps, causal, interpret)
  q = _pad(query * (1.0 / math.sqrt(d)), pt).transpose(0, 2, 1, 3)  # [b, h, t, d]
  k, v = (_pad(x, ps).transpose(0, 2, 1, 3) for x in (key, value))
  out = jax.vmap(run)(q, k, v)
  return out.transpose(0, 2, 1, 3)[:, :t].astype(query.dtype)


def validate(config, key: str) -> str:
  """config.KEY is one of IMPLEMENTATIONS (ConfigError naming them if not)."""
  return require(config, key, lambda v: v in IMPLEMENTATIONS,
                 f"one of {IMPLEMENTATIONS} ('xla': the reference, any platform; 'cudnn': "
                 "NVIDIA GPUs, bfloat16; 'splash': TPU, no per-example mask)")
