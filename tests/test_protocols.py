"""The papers' own evaluation protocols, as configs: the numbers each paper
gives are the ones the config uses."""

import math

import numpy as np
import pytest

from configs import finetune, linear_probe, patchformer, randsac
from ssl_jax.core import validation
from ssl_jax.tasks import whitening


@pytest.mark.parametrize('variant, data, examples', [
    ('randsac', 'imagenet2012', 1_281_167 - 10_000),
    ('randsac_cifar10', 'cifar10', 50_000 - 5_000)])
def test_randsac_probe_is_table_19(variant, data, examples):
  c = linear_probe.get_config(variant)
  assert c.data.name == data
  o = c.optimizer
  assert (o.name, o.momentum, o.weight_decay, o.schedule) == ('lars', 0.9, 0.0, 'cosine')
  assert c.batch_size == 16_384 and o.lr == pytest.approx(0.1 * 16_384 / 256)
  assert c.total_steps == math.ceil(90 * examples / 16_384)  # 90 epochs
  assert o.warmup_steps == math.ceil(10 * examples / 16_384)  # 10 warmup epochs
  # MAE's BatchNorm without affine parameters before the classifier.
  assert c.classifier.whiten and c.classifier.whiten_kind == 'per_feature'
  assert c.data.min_area == 0.08 and c.data.flip  # RandomResizedCrop
  validation.validate(c, 8)


def test_per_feature_normalisation_is_a_batchnorm_without_affine():
  x = np.random.default_rng(0).normal(3.0, [1.0, 10.0, 0.1], size=(500, 3))
  mean, matrix = whitening.fit(x, 'per_feature')
  assert np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0
  z = (x - mean) @ matrix
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
  with pytest.raises(ValueError, match="kind must be one of"):
    whitening.fit(x, 'pca')


def test_randsac_settings_follow_the_paper():
  assert randsac.get_config('cifar10').randsac.model.decoder_layers == 3  # Table 11 FLOPs
  assert randsac.get_config('imagenet100').randsac.model.architecture == 'masked'  # section 3
  for variant in ('randsac', 'randsac_cifar10'):
    assert finetune.get_config(variant).batch_size == 1024  # Table 18


def test_patchformer_uses_bert_adamweightdecay_at_paper_size():
  assert patchformer.get_config().optimizer.name == 'bert_adamw'
  assert finetune.get_config('patchformer').optimizer.name == 'bert_adamw'
  assert patchformer.get_config('tiny').optimizer.name == 'adamw'  # see the docstring
  assert linear_probe.get_config('patchformer').optimizer.name == 'adamw'


def test_igpt_cifar_finetunes_stop_early_on_held_out_images():
  c = finetune.get_config('igpt_l_cifar10')
  assert c.eval.select == 'best' and c.eval.every == 2000
  assert c.data.held_out_examples == 5000 and c.eval.split == 'test'
