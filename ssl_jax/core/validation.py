"""Checks a whole config before anything compiles.

`validate` checks the keys every run shares (steps, batch, data, optimizer,
mesh, evaluation), then dispatches to the method's own `validate` (or, for a
probe or fine-tune, to the classifier's keys and the backbone method's
`validate` and `validate_probe`). Every failure is a `ConfigError` with one
line that names the key and what is allowed.
"""

from __future__ import annotations

import ml_collections

from ssl_jax.config.checks import (ConfigError, boolean, get, is_int, is_number, one_of,
                                   positive_int, require)
from ssl_jax.core import optim
from ssl_jax.data import options
from ssl_jax.methods import registry
from ssl_jax.tasks import CLASSIFICATION, HEAD_INITS, HEADS, MODES
from ssl_jax.tasks.whitening import KINDS as WHITEN_KINDS

MONITORS = ('fewshot', 'knn')


def _data_option(config, key: str, check, *args) -> None:
  """One of the input pipeline's own checks, its error as a ConfigError
  naming the key (so an option is validated by one function)."""
  try:
    check(*args)
  except options.DataError as e:
    raise ConfigError(f'config.{key}={get(config, key)!r} is not allowed: {e}') from None


def validate_common(config: ml_collections.ConfigDict, num_devices: int,
                    num_processes: int = 1) -> None:
  """The keys every run shares: steps, batch, data, optimizer, mesh, eval."""
  objective = one_of(config, 'objective', registry.names() + (CLASSIFICATION,))
  if objective != CLASSIFICATION and not registry.get(objective).self_supervised:
    raise ConfigError(f'config.objective={objective!r} is not allowed: it has no '
                      'self-supervised loss; it can only be a probe\'s backbone '
                      f'(config.objective={CLASSIFICATION!r}, backbone.objective={objective!r})')
  require(config, 'seed', is_int, 'an integer')
  total = positive_int(config, 'total_steps')
  batch = positive_int(config, 'batch_size')
  one_of(config, 'compute_dtype', ('float32', 'bfloat16'))
  require(config, 'data.name', lambda v: isinstance(v, str) and v,
          "a tfds dataset name, 'ssl_jax_shapes' or 'folder'")
  if config.data.name == 'folder':
    require(config, 'data.data_dir', lambda v: isinstance(v, str) and v,
            "the folder's root path (ROOT/<class_name>/*.png|jpg) when data.name='folder'")
  require(config, 'data.split', lambda v: isinstance(v, str) and v, 'a split name')
  positive_int(config, 'data.image_size')
  require(config, 'data.min_area', lambda v: is_number(v) and 0 < v <= 1,
          'a number in (0, 1]')
  boolean(config, 'data.flip')
  if 'skip_bad_images' in config.data:
    boolean(config, 'data.skip_bad_images')
  if 'crop' in config.data:  # the pipeline's own check: data options are validated once
    _data_option(config, 'data.crop', options.check_crop, config.data.crop)
    _data_option(config, 'data.pad', options.check_pad, config.data.pad,
                 config.data.image_size)

  o = 'optimizer.'
  if 'name' in config.optimizer:  # absent: 'adamw'
    one_of(config, o + 'name', optim.OPTIMIZERS)
    if config.optimizer.name == 'lars':
      require(config, o + 'momentum', lambda v: is_number(v) and 0 <= v < 1,
              'a number in [0, 1) (LARS momentum)')
  require(config, o + 'lr', lambda v: is_number(v) and v > 0, 'a number > 0')
  require(config, o + 'weight_decay', lambda v: is_number(v) and v >= 0, 'a number >= 0')
  for b in ('b1', 'b2'):
    require(config, o + b, lambda v: is_number(v) and 0 <= v < 1, 'a number in [0, 1)')
  require(config, o + 'eps', lambda v: is_number(v) and v > 0, 'a number > 0')
  require(config, o + 'warmup_steps', lambda v: is_int(v) and 0 <= v < total,
          f'an integer in [0, total_steps={total})')
  one_of(config, o + 'schedule', ('cosine', 'constant'))
  require(config, o + 'grad_clip_norm', lambda v: v is None or (is_number(v) and v >= 0),
          'None or a number >= 0 (0 or None: no clipping)')

  one_of(config, 'sharding.rule', ('replicate', 'fsdp'))
  fsdp = require(config, 'sharding.fsdp_axis_size',
                 lambda v: is_int(v) and v > 0 and num_devices % v == 0,
                 f'an integer > 0 that divides the {num_devices} devices')
  positive_int(config, 'sharding.fsdp_min_size')
  if config.sharding.rule == 'replicate' and fsdp != 1:
    raise ConfigError(f"config.sharding.fsdp_axis_size={fsdp} is not allowed with "
                      "sharding.rule='replicate': must be 1 (or set sharding.rule='fsdp')")
  require(config, 'batch_size', lambda v: v % num_devices == 0,
          f'divisible by the number of devices ({num_devices})')
  require(config, 'batch_size', lambda v: v % num_processes == 0,
          f'divisible by the number of processes ({num_processes})')
  del batch

  positive_int(config, 'log_every')
  positive_int(config, 'checkpoint.every')
  positive_int(config, 'checkpoint.keep')
  require(config, 'checkpoint.keep_period', lambda v: is_int(v) and v >= 0,
          'an integer >= 0 (0: none kept beyond checkpoint.keep)')
  validate_eval(config, num_devices, num_processes)


def validate_eval(config: ml_collections.ConfigDict, num_devices: int,
                  num_processes: int) -> None:
  """The periodic evaluation: its split, batch and monitors."""
  e = 'eval.'
  require(config, e + 'every', lambda v: is_int(v) and v >= 0,
          'an integer >= 0 (0: evaluate only at the last step)')
  require(config, e + 'split', lambda v: isinstance(v, str) and v,
          "a split name (tfds slicing allowed, e.g. 'test[:1000]')")
  require(config, e + 'batch_size',
          lambda v: is_int(v) and v > 0 and v % num_devices == 0 and v % num_processes == 0,
          f'a positive integer divisible by the number of devices ({num_devices}) '
          f'and of processes ({num_processes})')
  require(config, e + 'crop_fraction', lambda v: is_number(v) and 0 < v <= 1,
          'a number in (0, 1] (fraction of the resized image kept by the centre crop)')
  monitors = require(config, e + 'monitors',
                      lambda v: isinstance(v, (tuple, list)) and set(v) <= set(MONITORS),
                      'a tuple of monitors from ' + ', '.join(map(repr, MONITORS)))
  if monitors:
    require(config, e + 'train_split', lambda v: isinstance(v, str) and v,
             'the labelled split few-shot and kNN learn from, e.g. \'train[:10000]\'')
    require(config, e + 'representation', lambda v: isinstance(v, str) and v,
             'a representation name')
  if 'fewshot' in monitors:
    require(config, e + 'fewshot_shots',
             lambda v: len(v) >= 1 and all(is_int(n) and n > 0 for n in v),
             'a non-empty tuple of positive integers (shots per class)')
    positive_int(config, e + 'fewshot_seeds')
    require(config, e + 'fewshot_l2', lambda v: is_number(v) and v > 0, 'a number > 0')
  if 'knn' in monitors:
    positive_int(config, e + 'knn_k')
    require(config, e + 'knn_temperature', lambda v: is_number(v) and v > 0, 'a number > 0')


def validate_online_probe(config: ml_collections.ConfigDict) -> None:
  require(config, 'online_probe.representation', lambda v: isinstance(v, str),
          "a representation name, or '' for no online probe")
  require(config, 'online_probe.lr', lambda v: is_number(v) and v > 0, 'a number > 0')


def validate_classification(config: ml_collections.ConfigDict) -> None:
  """A linear probe or fine-tune: its backbone, init checkpoint and head."""
  one_of(config, 'backbone.objective', registry.names())
  backbone = registry.get(config.backbone.objective)
  if config.backbone.data.image_size != config.data.image_size:
    raise ConfigError(
        f'config.data.image_size={config.data.image_size} is not allowed: must equal '
        f'config.backbone.data.image_size={config.backbone.data.image_size}, the size '
        'the backbone is built for (set data.image_size alone: the backbone follows it)')
  backbone.validate_backbone(config.backbone)
  require(config, 'init.workdir', lambda v: v is None or (isinstance(v, str) and v),
          "the pretraining run's --workdir, or None for a randomly initialised backbone")
  require(config, 'init.step', lambda v: v is None or (is_int(v) and v > 0),
          'None (the latest checkpoint) or a step > 0')
  c = 'classifier.'
  one_of(config, c + 'mode', MODES)
  one_of(config, c + 'head', HEADS)
  one_of(config, c + 'head_init', HEAD_INITS)
  require(config, c + 'representation', lambda v: isinstance(v, str) and v,
          'a representation name')
  require(config, c + 'dropout', lambda v: is_number(v) and 0 <= v < 1, 'a number in [0, 1)')
  require(config, c + 'label_smoothing', lambda v: is_number(v) and 0 <= v < 1,
          'a number in [0, 1)')
  require(config, c + 'mask_ratio', lambda v: is_number(v) and 0 <= v < 1,
          'a number in [0, 1) (fraction of patches masked while fine-tuning)')
  if config.classifier.mask_ratio and not backbone.finetune_masking:
    raise ConfigError(f'config.classifier.mask_ratio={config.classifier.mask_ratio} is not '
                      f'allowed with backbone {config.backbone.objective!r}: must be 0 (it '
                      'fine-tunes on whole images)')
  if config.classifier.mode == 'linear' and config.classifier.mask_ratio:
    raise ConfigError(f'config.classifier.mask_ratio={config.classifier.mask_ratio} is not '
                      "allowed with classifier.mode='linear': must be 0 (the frozen "
                      'backbone sees whole images)')
  boolean(config, c + 'whiten')
  one_of(config, c + 'whiten_kind', WHITEN_KINDS)
  if (config.classifier.whiten and config.classifier.mode != 'linear'
      and config.classifier.whiten_kind != 'per_feature'):
    raise ConfigError(f'config.classifier.whiten_kind={config.classifier.whiten_kind!r} is '
                      f'not allowed with classifier.mode={config.classifier.mode!r} and '
                      "whiten=True: must be 'per_feature' (a fixed standardisation of the "
                      "starting features, which the backbone then trains under; 'full' "
                      "decorrelates features that must stay frozen, mode='linear')")
  require(config, c + 'whiten_examples', lambda v: is_int(v) and v >= 2,
          'an integer >= 2 (training images whose features fit the whitening)')
  for key in ('mixup', 'cutmix'):
    require(config, c + key, lambda v: is_number(v) and v >= 0,
            'a number >= 0 (the Beta distribution\'s alpha; 0: off)')
  decay = require(config, c + 'layer_decay', lambda v: is_number(v) and 0 < v <= 1,
                  'a number in (0, 1] (1: no layer-wise decay)')
  if decay != 1 and not backbone.layer_decay:
    raise ConfigError(f'config.classifier.layer_decay={decay} is not allowed with backbone '
                      f'{config.backbone.objective!r}: must be 1 (its layers are not '
                      'numbered for layer-wise decay)')
  weight = require(config, c + 'generative_weight', lambda v: is_number(v) and v >= 0,
                    'a number >= 0 (weight of the backbone\'s own loss while fine-tuning; 0: '
                    'off)')
  if weight and (config.classifier.mode != 'finetune' or not backbone.generative_finetune):
    raise ConfigError(f'config.classifier.generative_weight={weight} is not allowed with '
                      f'classifier.mode={config.classifier.mode!r} and backbone '
                      f'{config.backbone.objective!r}: must be 0 (it needs a fine-tune of a '
                      'backbone method with the generative_finetune capability)')
  backbone.validate_probe(config)
  _data_option(config, 'data.randaugment', options.check_randaugment,
               tuple(config.data.randaugment) or None)
  require(config, 'data.label_fraction', lambda v: is_number(v) and 0 < v <= 1,
           'a number in (0, 1] (the fraction of training labels used)')
  require(config, 'data.subset_seed', lambda v: is_int(v) and v >= 0, 'an integer >= 0')
  validate_selection(config)
  if 'feature_probe' in config:
    validate_feature_probe(config)
  s = 'sweep.'
  for key in ('batch_size', 'lr'):
    require(config, s + key, lambda v: len(v) >= 1 and all(is_number(x) and x > 0 for x in v),
             'a non-empty tuple of positive numbers')
  require(config, s + 'epochs', lambda v: v is None or (is_number(v) and v > 0),
           'None (every run takes total_steps) or a number of epochs > 0')


SELECTIONS = ('last', 'best')


def validate_selection(config: ml_collections.ConfigDict) -> None:
  """What a classification run may choose with: only the examples held out
  of its training split, never eval.split (read once, at the end)."""
  held = require(config, 'data.held_out_examples', lambda v: is_int(v) and v >= 0,
                 'an integer >= 0 (labelled training examples held out, class-balanced, '
                 'for model selection; 0: none)')
  select = one_of(config, 'eval.select', SELECTIONS)
  if config.eval.every and not held:
    raise ConfigError(f'config.eval.every={config.eval.every} is not allowed with '
                      'data.held_out_examples=0: evaluations during training read the '
                      'held-out examples, and eval.split is read once, at the end. Set '
                      'data.held_out_examples (e.g. 1000) or eval.every=0')
  if select == 'best' and not (held and config.eval.every):
    raise ConfigError("config.eval.select='best' (early stopping) needs held-out examples "
                      'to choose on and evaluations to choose among: set '
                      'data.held_out_examples > 0 and eval.every > 0')


def validate_feature_probe(config: ml_collections.ConfigDict) -> None:
  """The logistic-regression probes of --layer_sweep / --low_data."""
  f = 'feature_probe.'
  require(config, f + 'train_examples', lambda v: v is None or (is_int(v) and v >= 2),
          'None (every training image) or an integer >= 2')
  if 'features_dir' in config.feature_probe:
    require(config, f + 'features_dir', lambda v: isinstance(v, str) and '://' not in v,
            "'' (a temporary directory) or a local directory for the features' memory maps")
  require(config, f + 'layers', lambda v: all(isinstance(x, str) and x for x in v),
           "a tuple of representation names (() for all), e.g. ('layer_4', 'layer_8')")
  require(config, f + 'l2_grid', lambda v: len(v) >= 1 and all(
      is_number(x) and x >= 0 for x in v), 'a non-empty tuple of numbers >= 0')
  positive_int(config, f + 'steps')
  require(config, f + 'shots', lambda v: len(v) >= 1 and all(is_int(x) and x > 0 for x in v),
           'a non-empty tuple of labels per class, e.g. (4, 25, 400)')
  positive_int(config, f + 'seeds')
  require(config, f + 'low_data_l2', lambda v: is_number(v) and v >= 0, 'a number >= 0')
  if 'ridge_shots' in config.feature_probe:
    require(config, f + 'ridge_shots', lambda v: is_int(v) and v >= 0,
            "an integer >= 0 (labels per class of the layer sweep's ridge column; 0: none)")


def validate(config: ml_collections.ConfigDict, num_devices: int,
             num_processes: int = 1) -> None:
  """Raises ConfigError on the first impossible value."""
  validate_common(config, num_devices, num_processes)
  if config.objective == CLASSIFICATION:
    validate_classification(config)
  else:
    method = registry.get(config.objective)
    method.validate(config)
    if method.batch_counts_views:  # the images are what is sharded
      views = len(method.views(config) or (None,))
      if config.batch_size % views:
        raise ConfigError(f'config.batch_size={config.batch_size} is not allowed: for '
                          f'{config.objective!r} it counts views, so it must be divisible by '
                          f'the {views} views of each image')
      images = method.images_per_step(config)
      for count, what in ((num_devices, 'devices'), (num_processes, 'processes')):
        if images % count:
          raise ConfigError(f'config.batch_size={config.batch_size} is not allowed: it counts '
                            f'views, and its {images} images per step must be divisible by '
                            f'the number of {what} ({count})')
    validate_online_probe(config)
    # The method's views against the data options, with the pipeline's check.
    try:
      options.check_views(method.views(config), method.share_geometry(config),
                           randaugment=tuple(config.data.get('randaugment', ())) or None,
                           crop=config.data.get('crop', 'resized'))
    except options.DataError as e:
      raise ConfigError(f'config.objective={config.objective!r} declares views that this '
                        f'config\'s data options cannot give: {e}') from None


def images_per_step(config: ml_collections.ConfigDict) -> int:
  """Images the input pipeline reads per training step: batch_size, or what
  the method makes of it (ssl_jax.methods.base.Method.images_per_step)."""
  if config.objective == CLASSIFICATION:
    return config.batch_size
  return registry.get(config.objective).images_per_step(config)


def validate_representations(config: ml_collections.ConfigDict, available) -> None:
  """Representation names against what the model offers (needs the model
  built, so the loop calls it after `validate`, still before compiling)."""
  keys = ['eval.representation'] if config.eval.monitors else []
  keys += ['classifier.representation'] if config.objective == CLASSIFICATION else [
      'online_probe.representation']
  for key in keys:
    name = get(config, key)
    if key == 'online_probe.representation' and not name:
      continue
    if name not in available:
      raise ConfigError(f'config.{key}={name!r} is not allowed: must be one of '
                        + ', '.join(map(repr, available)))
