"""iGPT's transformer: GPT-2 style, as in the released iGPT model.

Where the iGPT summary is silent this follows the released model
(openai/image-gpt, src/model.py), choice by choice:
* pre-norm blocks; the norm divides by the root mean square (no mean
  subtraction, no bias) and multiplies by a learned gain, eps 1e-5;
* no biases anywhere; q, k, v projections initialised N(0, 1/d), the
  attention output N(0, 1/(d L)), the MLP N(0, 0.02);
* MLP 4x wide with the sigmoid GELU x * sigmoid(1.702 x);
* learned position embeddings N(0, 0.01), token embeddings N(0, 0.02), an
  untied output embedding initialised to zero, and (autoregressive only) a
  learned start-of-sequence vector N(0, 0.02) in front of the shifted input;
* BERT: no causal mask; masked tokens' embeddings are zeroed (no mask
  token), position embeddings still added.

Parameters per block: 12 d^2 + 2 d. iGPT-S (512, 24 layers, context 1024)
has 76.6M, iGPT-M (1024, 36) 455.2M, iGPT-L (1536, 48) 1362.2M.

Decoding: with `cache` (from `init_cache`) the call writes the keys and
values of its tokens at `index` and attends to everything before them, so
sampling costs one token's work per step.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.nn.attention import fused

Dtype = Any
SOS = -1  # the input token that stands for the start-of-sequence vector


def gelu_sigmoid(x: jax.Array) -> jax.Array:
  """The released model's GELU approximation ("gelu2")."""
  return x * jax.nn.sigmoid(1.702 * x)


class Attention(nn.Module):
  heads: int
  num_layers: int
  causal: bool
  dtype: Dtype = jnp.float32
  attention: str = 'xla'  # ssl_jax.nn.attention.IMPLEMENTATIONS (training passes)

  @nn.compact
  def __call__(self, x: jax.Array, cache=None, index=None):
    d = x.shape[-1]
    dh = d // self.heads

    def project(name):
      return nn.DenseGeneral((self.heads, dh), use_bias=False, dtype=self.dtype, name=name,
                             kernel_init=nn.initializers.normal(d ** -0.5))(x)

    q, k, v = project('query'), project('key'), project('value')  # [b, t, h, dh]
    if cache is None:
      out = fused(q, k, v, self.attention, is_causal=self.causal)
    else:
      ck, cv = cache
      ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
      cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
      queries = index + jnp.arange(x.shape[1])
      mask = jnp.arange(ck.shape[1])[None, :] <= queries[:, None]  # [t, ctx]
      out = jax.nn.dot_product_attention(q, ck.astype(q.dtype), cv.astype(q.dtype),
                                         mask=mask[None, None])
      cache = (ck, cv)
    out = nn.DenseGeneral(d, axis=(-2, -1), use_bias=False, dtype=self.dtype, name='out',
                          kernel_init=nn.initializers.normal((d * self.num_layers) ** -0.5))(out)
    return out, cache


class Block(nn.Module):
  """Pre-norm attention + MLP. Returns (output, the normed input [b, t, d]
  float32, the cache)."""
  heads: int
  num_layers: int
  causal: bool
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  attention: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, cache=None, index=None):
    d = x.shape[-1]
    norm = lambda name: nn.RMSNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
    h = norm('ln_1')(x)
    a, cache = Attention(self.heads, self.num_layers, self.causal, self.dtype, self.attention,
                         name='attn')(
        h, cache, index)
    x = x + a
    dense = lambda f, name: nn.Dense(f, use_bias=False, dtype=self.dtype, name=name,  # noqa: E731
                                     kernel_init=nn.initializers.normal(0.02))
    m = dense(d, 'mlp_out')(gelu_sigmoid(dense(d * self.mlp_ratio, 'mlp_in')(norm('ln_2')(x))))
    return x + m, h.astype(jnp.float32), cache


class GPT(nn.Module):
  """A decoder-only transformer over palette tokens.

  __call__(inputs, keep=None) with inputs int32 [b, t]:
    causal: inputs[:, i] is the token before position i (SOS at 0), as
      `shift_right` builds them; position i's logits predict token i.
    BERT: inputs are the tokens; keep [b, t] bool, False where masked.
  Returns (output, intermediates). output: logits [b, t, vocab] float32, or
  (logits, the updated cache) when a `cache` is passed (decoding).
  intermediates: {'layer_l': [b, t, d] float32} for l = 0 .. L, the normed
  output of layer l: the input of block l + 1 through its ln_1 (l = 0 is
  the embeddings), and the final norm for l = L.
  """
  vocab: int
  context: int
  width: int
  num_layers: int
  heads: int
  causal: bool = True
  mlp_ratio: int = 4
  remat: bool = False
  dtype: Dtype = jnp.float32
  attention: str = 'xla'

  @nn.compact
  def __call__(self, inputs: jax.Array, keep: jax.Array | None = None, *, cache=None,
               index=0):
    wte = self.param('wte', nn.initializers.normal(0.02), (self.vocab, self.width))
    wpe = self.param('wpe', nn.initializers.normal(0.01), (self.context, self.width))
    wtet = self.param('wtet', nn.initializers.zeros, (self.vocab, self.width))
    t = inputs.shape[1]
    h = wte[jnp.maximum(inputs, 0)]
    if self.causal:
      sos = self.param('sos', nn.initializers.normal(0.02), (self.width,))
      h = jnp.where((inputs == SOS)[..., None], sos, h)
    if keep is not None:
      h = h * keep[..., None].astype(h.dtype)
    h = (h + jax.lax.dynamic_slice_in_dim(wpe, index, t)).astype(self.dtype)
    block = nn.remat(Block) if self.remat and cache is None else Block
    intermediates, new_cache = {}, []
    for i in range(self.num_layers):
      h, normed, layer_cache = block(
          self.heads, self.num_layers, self.causal, self.mlp_ratio, self.dtype,
          self.attention, name=f'block{i + 1}')(h, None if cache is None else cache[i], index)
      intermediates[f'layer_{i}'] = normed
      new_cache.append(layer_cache)
    h = nn.RMSNorm(epsilon=1e-5, dtype=self.dtype, name='ln_f')(h)
    intermediates[f'layer_{self.num_layers}'] = h.astype(jnp.float32)
    logits = jnp.einsum('btd,vd->btv', h, wtet.astype(self.dtype)).astype(jnp.float32)
    return (logits if cache is None else (logits, new_cache)), intermediates

  def init_cache(self, batch: int, length: int, dtype=jnp.float32) -> list:
    """Empty keys and values [batch, length, heads, width / heads] per layer."""
    shape = (batch, length, self.heads, self.width // self.heads)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(self.num_layers)]


def shift_right(tokens: jax.Array) -> jax.Array:
  """The causal model's inputs: SOS, then every token but the last."""
  sos = jnp.full(tokens.shape[:-1] + (1,), SOS, tokens.dtype)
  return jnp.concatenate([sos, tokens[..., :-1]], axis=-1)
