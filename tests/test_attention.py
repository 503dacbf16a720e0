"""The attention implementations (ssl_jax.nn.attention) against the reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.config import ConfigError
from ssl_jax.config.checks import incompatible_keys
from ssl_jax.nn import attention


def _qkv(b=2, t=17, s=17, h=3, d=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (b, t, h, d)), jax.random.normal(keys[1], (b, s, h, d)),
          jax.random.normal(keys[2], (b, s, h, d)))


def _reference(q, k, v, mask=None):
  logits = jnp.einsum('bthd,bshd->bhts', q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = jnp.where(mask, logits, -1e30)
  return jnp.einsum('bhts,bshd->bthd', jax.nn.softmax(logits, -1), v)


@pytest.mark.slow  # the Pallas kernel interpreted on the CPU
@pytest.mark.parametrize('t,s', [(17, 17), (5, 130), (128, 128)])
def test_splash_matches_the_reference_with_padding(t, s):
  q, k, v = _qkv(t=t, s=s)
  got = attention.fused(q, k, v, 'splash', interpret=True)
  np.testing.assert_allclose(got, _reference(q, k, v), atol=2e-5, rtol=2e-5)
  assert got.shape == q.shape


@pytest.mark.slow  # the Pallas kernel interpreted on the CPU
def test_splash_causal_matches_the_reference():
  q, k, v = _qkv(t=33, s=33)
  causal = jnp.tril(jnp.ones((33, 33), bool))
  got = attention.fused(q, k, v, 'splash', is_causal=True, interpret=True)
  np.testing.assert_allclose(got, _reference(q, k, v, causal), atol=2e-5, rtol=2e-5)


def test_xla_matches_the_reference_with_a_mask():
  q, k, v = _qkv()
  mask = jax.random.bernoulli(jax.random.key(3), 0.7, (2, 1, 17, 17)).at[..., 0].set(True)
  got = attention.fused(q, k, v, 'xla', mask=mask)
  np.testing.assert_allclose(got, _reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
  # flax's own function is the 'xla' attention_fn: models are unchanged by the key.
  assert attention.attention_fn('xla') is nn.dot_product_attention


@pytest.mark.parametrize('t,s,masked,causal', [(17, 17, False, False), (17, 17, True, False),
                                                (17, 17, False, True), (4, 7, True, False)])
def test_odd_token_counts_padded_for_cudnn_give_the_reference_and_its_gradients(
    t, s, masked, causal):
  # The padding that lets cuDNN train at odd lengths, run on the reference kernel.
  q, k, v = _qkv(t=t, s=s)
  mask = None
  if masked:
    mask = jax.random.bernoulli(jax.random.key(3), 0.7, (2, 1, t, s)).at[..., 0].set(True)
  full = mask
  if causal:
    full = jnp.tril(jnp.ones((t, s), bool))

  def loss(fn, q, k, v):
    return jnp.sum(jnp.sin(fn(q, k, v)))
  ours = lambda q, k, v: attention._even(q, k, v, mask, None, causal, 'xla')  # noqa: E731
  ref = lambda q, k, v: _reference(q, k, v, full)  # noqa: E731
  np.testing.assert_allclose(jax.jit(ours)(q, k, v), ref(q, k, v), atol=2e-5, rtol=2e-5)
  got, want = (jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)(fn, q, k, v)
               for fn in (ours, ref))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=5e-5, rtol=5e-5)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN attention needs an NVIDIA GPU')
@pytest.mark.parametrize('t', [16, 17, 197])
def test_cudnn_matches_the_reference_and_trains(t):
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(t=t, s=t, d=64))
  got = attention.fused(q, k, v, 'cudnn')
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(_reference(q, k, v), np.float32), atol=2e-2)
  # Differentiated: the path JAX refuses at odd lengths without the padding.
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)  # noqa: E731
  got = jax.grad(loss(lambda *a: attention.fused(*a, 'cudnn')), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(_reference), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    assert np.linalg.norm(g - w) <= 2e-2 * np.linalg.norm(w)


@pytest.mark.slow  # the Pallas kernel interpreted on the CPU
def test_a_flax_block_with_splash_matches_xla():
  from ssl_jax.nn.transformer import Encoder
  x = jax.random.normal(jax.random.key(0), (2, 10, 16))
  ref = Encoder(2, heads=2)
  params = ref.init(jax.random.key(1), x, train=False)
  want = ref.apply(params, x, train=False)[0]
  got = Encoder(2, heads=2, attention='splash').apply(params, x, train=False)[0]
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_what_the_fused_kernels_refuse():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match='no per-example mask'):
    attention.fused(q, k, v, 'splash', mask=jnp.ones((2, 1, 17, 17), bool), interpret=True)
  with pytest.raises(ValueError, match='no attention dropout'):
    attention.attention_fn('cudnn')(q, k, v, dropout_rate=0.1, deterministic=False)
  with pytest.raises(ValueError, match="one of \\('xla', 'cudnn', 'splash'\\)"):
    attention.attention_fn('flash')


@pytest.mark.parametrize('method', ['mae', 'multitask_vit', 'patchformer', 'randsac', 'igpt'])
def test_the_attention_key_is_validated_and_resumable(method):
  import importlib
  from ssl_jax.methods import registry
  config = importlib.import_module(f'configs.{method}').get_config('tiny')
  config.unlock()
  config[method].model.attention = 'flash'
  with pytest.raises(ConfigError, match=f"config.{method}.model.attention='flash' is not "
                     "allowed: must be one of \\('xla', 'cudnn', 'splash'\\)"):
    registry.get(method).validate(config)
  saved = config.to_dict()
  saved[method]['model']['attention'] = 'xla'
  config[method].model.attention = 'splash'
  assert incompatible_keys(saved, config.to_dict()) == []  # a kernel, not the network
  del saved[method]['model']['attention']  # a checkpoint from before the key
  assert registry.get(method).added_keys[f'{method}.model.attention'] == 'xla'
