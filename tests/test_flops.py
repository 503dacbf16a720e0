"""Model FLOPs (the jaxpr count), XLA's matmul count, peaks and MFU."""

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.core import flops


def _abstract(*shapes):
  return [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]


def test_jaxpr_flops_counts_dots_convs_scans_and_gradients_by_hand():
  # x [8, 8] @ w [8, 8]: 2 * 8^3 = 1024 FLOPs; a 3x3 conv from 2 to 5
  # channels on [2, 4, 4]: 2 * (2*4*4*5 outputs) * (3*3*2) = 5760.
  def f(x, w, k):
    y = jnp.tanh(x @ w)
    z = jax.lax.conv_general_dilated(y.reshape(2, 4, 4, 2), k, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    scanned = jax.lax.scan(lambda c, _: (c @ w, None), y, None, length=3)[0]
    return scanned.sum() + z.sum()

  args = _abstract((8, 8), (8, 8), (3, 3, 2, 5))
  forward = 1024 + 5760 + 3 * 1024
  assert flops.jaxpr_flops(jax.make_jaxpr(f)(*args)) == forward
  # The gradient in w and k (not x): each dot and conv twice more (input and
  # weight gradients), except x @ w, whose input gradient is not needed.
  backward = 1024 + 2 * 5760 + 3 * 2 * 1024
  grad = jax.grad(f, argnums=(1, 2))
  assert flops.jaxpr_flops(jax.make_jaxpr(grad)(*args)) == forward + backward
  # Rematerialisation shows up as recomputation (hence reference_config).
  remat = jax.grad(lambda x, w, k: f(x, w, k) + jax.checkpoint(lambda a: jnp.tanh(a @ w).sum())(x),
                   argnums=(1, 2))
  # (its forward, its weight gradient, its forward again)
  assert flops.jaxpr_flops(jax.make_jaxpr(remat)(*args)) == forward + backward + 3 * 1024


def test_jaxpr_flops_grouped_conv_batched_dot_and_cond():
  def f(x, k, a, b, p):
    # feature_group_count=2: each output reads 3*3*(4/2) inputs.
    z = jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID', feature_group_count=2,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    e = jnp.einsum('bij,bjk->bik', a, b)  # 3 batches of [4, 5] @ [5, 6]
    c = jax.lax.cond(p.sum() > 0, lambda: (a @ b.swapaxes(1, 2)[..., :5, :]).sum(),
                     lambda: jnp.zeros(()))
    return z.sum() + e.sum() + c

  args = _abstract((1, 5, 5, 4), (3, 3, 2, 6), (3, 4, 5), (3, 5, 6), (2,))
  conv = 2 * (1 * 3 * 3 * 6) * (3 * 3 * 2)
  assert flops.jaxpr_flops(jax.make_jaxpr(f)(*args)) == conv + 2 * 3 * 4 * 5 * 6


def test_hlo_matmul_flops_reads_xla_dots_and_convolutions():
  def f(x, w, k, a, b):
    z = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', feature_group_count=2,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return z, jnp.tanh(x.reshape(-1, 4) @ w), jnp.einsum('bij,bjk->bik', a, b)

  args = _abstract((2, 6, 6, 4), (4, 7), (3, 3, 2, 8), (3, 4, 5), (3, 5, 6))
  compiled = jax.jit(f).lower(*args).compile()
  want = flops.jaxpr_flops(jax.make_jaxpr(f)(*args))
  assert want == (2 * (2 * 6 * 6 * 8) * (3 * 3 * 2) + 2 * 72 * 4 * 7 + 2 * 3 * 4 * 5 * 6)
  assert flops.hlo_matmul_flops(compiled.as_text()) == want


def test_model_flops_of_a_vit_match_the_hand_formula():
  """An independent analytic count: per block 8 n d^2 (q, k, v, out), 4 n^2 d
  (scores, weighted values) and 4 r n d^2 (the MLP) per example; the patch
  embedding 2 n P d; training = forward + gradient: blocks x3, the
  embedding x2 (no gradient with respect to the pixels)."""
  from ssl_jax.nn.vit import ViT
  b, n, p, d, depth, heads, r = 4, 16, 48, 32, 2, 4, 4
  model = ViT(num_patches=n, width=d, depth=depth, heads=heads, mlp_ratio=r)
  patches = jnp.zeros((b, n, p))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), patches, train=False))

  def loss(params, patches):
    return model.apply(params, patches, train=False)[0].sum()

  counted = flops.jaxpr_flops(jax.make_jaxpr(jax.value_and_grad(loss))(params, patches))
  t = n + 1  # with the [CLS] token
  block = 8 * t * d**2 + 4 * t**2 * d + 4 * r * t * d**2
  embed = 2 * n * p * d
  assert counted == b * (3 * depth * block + 2 * embed)


def test_reference_config_turns_remat_off_and_attention_to_xla():
  from configs import igpt
  c = igpt.get_config('m')
  assert c.igpt.model.remat
  c.igpt.model.attention = 'cudnn'
  ref = flops.reference_config(c)
  assert not ref.igpt.model.remat and ref.igpt.model.attention == 'xla'
  assert c.igpt.model.remat and c.igpt.model.attention == 'cudnn'  # not changed


def test_peak_table_matches_device_kinds():
  assert flops.table_peak('TPU v3', 'bfloat16') == 61.5e12  # per TensorCore
  assert flops.table_peak('TPU v4', 'float32') == 275e12
  assert flops.table_peak('TPU v5 lite', 'bfloat16') == 197e12  # v5e, not v5p
  assert flops.table_peak('TPU v5', 'bfloat16') == 459e12
  assert flops.table_peak('TPU v6 lite', 'bfloat16') == 918e12
  assert flops.table_peak('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert flops.table_peak('NVIDIA H100 80GB HBM3', 'float32') == 494.7e12
  assert flops.table_peak('NVIDIA H200', 'bfloat16') == 989.4e12
  assert flops.table_peak('NVIDIA A100-SXM4-40GB', 'float32') == 156e12
  assert flops.table_peak('NVIDIA GeForce RTX 3090', 'bfloat16') is None

  class Device:
    platform, process_index = 'gpu', 0
    device_kind = 'NVIDIA GeForce RTX 3090'
  peak, source = flops.peak_flops([Device()], 'bfloat16')
  assert peak is None and 'PEAK_TFLOPS' in source
  Device.device_kind = 'NVIDIA H100 80GB HBM3'
  assert flops.peak_flops([Device()] * 8, 'bfloat16')[0] == pytest.approx(8 * 989.4e12)


def test_cpu_peak_is_measured_once_and_cached(monkeypatch, tmp_path):
  monkeypatch.setenv('SSL_JAX_CACHE', str(tmp_path))
  calls = []
  monkeypatch.setattr(flops, 'measure_matmul_peak', lambda dtype: calls.append(dtype) or 5e10)
  flops.cpu_peak.cache_clear()
  try:
    assert flops.cpu_peak('float32') == 5e10
    flops.cpu_peak.cache_clear()  # a new process: read from the file
    assert flops.cpu_peak('float32') == 5e10 and calls == ['float32']
    (key,) = json.loads((tmp_path / 'cpu_peak.json').read_text())
    assert 'cores' in key and 'float32' in key
    cpus = [d for d in jax.devices() if d.platform == 'cpu']
    peak, source = flops.peak_flops(cpus, 'float32')
    assert peak == 5e10 and 'measured' in source  # the host's, however many fake devices
  finally:
    flops.cpu_peak.cache_clear()


def test_utilisation_scalars():
  got = flops.utilisation(2e12, 3e12, 0.5, 8e12)
  assert got == pytest.approx({'model_tflops_per_sec': 4.0, 'hardware_tflops_per_sec': 6.0,
                               'mfu': 0.5, 'hfu': 0.75})
  assert flops.utilisation(2e12, None, 0.5, None) == {'model_tflops_per_sec': 4.0}


def test_an_xla_count_under_half_the_model_flops_is_no_hardware_count():
  # What XLA's cost analysis gave for MAE's step on an H200: 7% of the model's.
  got = flops.utilisation(2e12, 0.14e12, 0.5, 8e12)
  assert got == pytest.approx({'model_tflops_per_sec': 4.0, 'mfu': 0.5})
  assert 'misses the matrix work' in flops.describe(2e12, 0.14e12, 8e12, 'table')
  # Recomputation can only add; a few percent under is counting noise, kept.
  assert flops.utilisation(2e12, 1.9e12, 0.5, 8e12)['hfu'] == pytest.approx(0.475)
  assert 'misses' not in flops.describe(2e12, 1.9e12, 8e12, 'table')


def _methods():
  import test_golden
  return test_golden.tiny_methods()


@pytest.mark.slow
@pytest.mark.parametrize('method', _methods())
def test_model_flops_match_xla_matmul_count(method, shapes_data_dir):
  """The jaxpr count against XLA's count of the compiled matmuls, for each
  method's tiny config at its full batch (1 device): within 10%. Where
  they differ, XLA has simplified (e.g. a dead branch) or fused; they are
  counts of the same program, not estimates."""
  from ssl_jax.core import assembly
  config = importlib.import_module(f'configs.{method}').get_config('tiny')
  config.data.data_dir = shapes_data_dir
  if method == 'multitask_vit':  # the diagnostics' cond: XLA counts its branch
    config.multitask_vit.diagnostics_every = 0
  assembly.prepare_method(config)
  trainer = assembly.Trainer(config, jax.devices()[:1], num_classes=10)
  compiled, hardware = trainer.compile_step(trainer.abstract_state(),
                                            assembly.abstract_batch(config))
  model = trainer.model_flops()
  xla = flops.hlo_matmul_flops(compiled.as_text())
  assert model > 1e9 and hardware > 0
  np.testing.assert_allclose(model, xla, rtol=0.10, err_msg=method)


def test_a_linear_probe_counts_no_backward_pass_through_its_frozen_backbone():
  """A fine-tune's gradient through the backbone costs about two more
  forward passes; a linear probe's frozen backbone (stop_gradient) none."""
  from conftest import small_classifier_config
  from ssl_jax.core import assembly
  count = {mode: assembly.Trainer(small_classifier_config(mode), jax.devices()[:1],
                                  num_classes=10).model_flops()
           for mode in ('linear', 'finetune')}
  assert 2.0 < count['finetune'] / count['linear'] < 3.0, count
