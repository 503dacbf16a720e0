"""Checks a whole config before anything compiles.

Configs are locked (`ml_collections`): an unknown key or a value of the wrong
type is rejected by the flag parser. `validate` then checks every value that
could be impossible, and raises `ConfigError` with one line that names the
key and what is allowed.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import ml_collections

from ssl_jax import objectives


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  value = config
  for part in key.split('.'):
    value = value[part]
  return value


def _require(config, key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
  try:
    value = _get(config, key)
  except (KeyError, AttributeError):
    raise ConfigError(f'config.{key} is missing; it must be {allowed}') from None
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    raise ConfigError(f'config.{key}={value!r} is not allowed: must be {allowed}')
  return value


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(config, key):
  return _require(config, key, lambda v: _is_int(v) and v > 0, 'an integer > 0')


def _unit_interval(config, key, *, open_: bool):
  if open_:
    return _require(config, key, lambda v: _is_number(v) and 0 < v < 1,
                    'a number in (0, 1)')
  return _require(config, key, lambda v: _is_number(v) and 0 <= v <= 1,
                  'a number in [0, 1]')


def _range_pair(config, key, lo_bound=0.0):
  return _require(
      config, key,
      lambda v: len(v) == 2 and all(map(_is_number, v)) and lo_bound <= v[0] <= v[1],
      f'a pair (lo, hi) with {lo_bound} <= lo <= hi')


def one_of(config, key, allowed):
  return _require(config, key, lambda v: v in allowed,
                  'one of ' + ', '.join(repr(a) for a in allowed))


def validate_common(config: ml_collections.ConfigDict, num_devices: int,
                    num_processes: int = 1) -> None:
  """The keys every run shares: steps, batch, data, optimizer, mesh, eval."""
  one_of(config, 'objective', objectives.SELF_SUPERVISED + (CLASSIFICATION,))
  _require(config, 'seed', _is_int, 'an integer')
  total = positive_int(config, 'total_steps')
  batch = positive_int(config, 'batch_size')
  one_of(config, 'compute_dtype', ('float32', 'bfloat16'))
  _require(config, 'data.name', lambda v: isinstance(v, str) and v,
           "a tfds dataset name, 'ssl_jax_shapes' or 'folder'")
  if config.data.name == 'folder':
    _require(config, 'data.data_dir', lambda v: isinstance(v, str) and v,
             "the folder's root path (ROOT/<class_name>/*.png|jpg) when data.name='folder'")
  _require(config, 'data.split', lambda v: isinstance(v, str) and v, 'a split name')
  positive_int(config, 'data.image_size')
  _require(config, 'data.min_area', lambda v: _is_number(v) and 0 < v <= 1,
           'a number in (0, 1]')
  _require(config, 'data.flip', lambda v: isinstance(v, bool), 'True or False')
  if 'crop' in config.data:
    from ssl_jax.data import pipeline
    one_of(config, 'data.crop', pipeline.CROPS)
    size = config.data.image_size
    _require(config, 'data.pad', lambda v: _is_int(v) and 0 <= v < size,
             f'an integer in [0, data.image_size={size}) (reflection padding of data.crop=\'pad\')')

  o = 'optimizer.'
  _require(config, o + 'lr', lambda v: _is_number(v) and v > 0, 'a number > 0')
  _require(config, o + 'weight_decay', lambda v: _is_number(v) and v >= 0, 'a number >= 0')
  for b in ('b1', 'b2'):
    _require(config, o + b, lambda v: _is_number(v) and 0 <= v < 1, 'a number in [0, 1)')
  _require(config, o + 'eps', lambda v: _is_number(v) and v > 0, 'a number > 0')
  _require(config, o + 'warmup_steps', lambda v: _is_int(v) and 0 <= v < total,
           f'an integer in [0, total_steps={total})')
  one_of(config, o + 'schedule', ('cosine', 'constant'))
  _require(config, o + 'grad_clip_norm', lambda v: v is None or (_is_number(v) and v >= 0),
           'None or a number >= 0 (0 or None: no clipping)')

  one_of(config, 'sharding.rule', ('replicate', 'fsdp'))
  fsdp = _require(config, 'sharding.fsdp_axis_size',
                  lambda v: _is_int(v) and v > 0 and num_devices % v == 0,
                  f'an integer > 0 that divides the {num_devices} devices')
  positive_int(config, 'sharding.fsdp_min_size')
  if config.sharding.rule == 'replicate' and fsdp != 1:
    raise ConfigError(f"config.sharding.fsdp_axis_size={fsdp} is not allowed with "
                      "sharding.rule='replicate': must be 1 (or set sharding.rule='fsdp')")
  _require(config, 'batch_size', lambda v: v % num_devices == 0,
           f'divisible by the number of devices ({num_devices})')
  _require(config, 'batch_size', lambda v: v % num_processes == 0,
           f'divisible by the number of processes ({num_processes})')
  del batch

  positive_int(config, 'log_every')
  positive_int(config, 'checkpoint.every')
  positive_int(config, 'checkpoint.keep')
  validate_eval(config, num_devices, num_processes)


MONITORS = ('fewshot', 'knn')


def validate_eval(config: ml_collections.ConfigDict, num_devices: int,
                  num_processes: int) -> None:
  """The periodic evaluation: its split, batch and monitors."""
  e = 'eval.'
  _require(config, e + 'every', lambda v: _is_int(v) and v >= 0,
           'an integer >= 0 (0: evaluate only at the last step)')
  _require(config, e + 'split', lambda v: isinstance(v, str) and v,
           "a split name (tfds slicing allowed, e.g. 'test[:1000]')")
  _require(config, e + 'batch_size',
           lambda v: _is_int(v) and v > 0 and v % num_devices == 0 and v % num_processes == 0,
           f'a positive integer divisible by the number of devices ({num_devices}) '
           f'and of processes ({num_processes})')
  _require(config, e + 'crop_fraction', lambda v: _is_number(v) and 0 < v <= 1,
           'a number in (0, 1] (fraction of the resized image kept by the centre crop)')
  monitors = _require(config, e + 'monitors',
                      lambda v: isinstance(v, (tuple, list)) and set(v) <= set(MONITORS),
                      'a tuple of monitors from ' + ', '.join(map(repr, MONITORS)))
  if monitors:
    _require(config, e + 'train_split', lambda v: isinstance(v, str) and v,
             'the labelled split few-shot and kNN learn from, e.g. \'train[:10000]\'')
    _require(config, e + 'representation', lambda v: isinstance(v, str) and v,
             'a representation name')
  if 'fewshot' in monitors:
    _require(config, e + 'fewshot_shots',
             lambda v: len(v) >= 1 and all(_is_int(n) and n > 0 for n in v),
             'a non-empty tuple of positive integers (shots per class)')
    positive_int(config, e + 'fewshot_seeds')
    _require(config, e + 'fewshot_l2', lambda v: _is_number(v) and v > 0, 'a number > 0')
  if 'knn' in monitors:
    positive_int(config, e + 'knn_k')
    _require(config, e + 'knn_temperature', lambda v: _is_number(v) and v > 0, 'a number > 0')


def validate_patchformer(config: ml_collections.ConfigDict) -> None:
  """PatchFormer's keys: patches, masks, augmentations, targets, model."""
  p = 'patchformer.'
  size = config.data.image_size
  patch = _require(config, p + 'patch_size',
                   lambda v: _is_int(v) and v > 0 and size % v == 0,
                   f'a positive integer that divides data.image_size={size}')
  grid = size // patch
  if grid * grid < 2:
    raise ConfigError(f'config.{p}patch_size={patch} leaves one patch in a {size}x{size} '
                      'image: need at least 2 patches to mask')
  _unit_interval(config, p + 'mask_ratio', open_=True)
  _require(config, p + 'mask_block',
           lambda v: _is_int(v) and v > 0 and grid % v == 0 and (grid // v) ** 2 >= 2,
           f'a positive integer that divides the {grid}x{grid} patch grid '
           'and leaves at least 2 blocks')
  _require(config, p + 'jitter_crop', lambda v: _is_int(v) and 0 < v <= patch,
           f'an integer in [1, patch_size={patch}]')
  a = p + 'augment.'
  _require(config, a + 'brightness', lambda v: _is_number(v) and 0 <= v <= 1,
           'a number in [0, 1]')
  _require(config, a + 'hue', lambda v: _is_number(v) and 0 <= v <= 0.5,
           'a number in [0, 0.5] (fraction of a full turn)')
  _range_pair(config, a + 'saturation')
  _range_pair(config, a + 'contrast')
  _unit_interval(config, a + 'flip_prob', open_=False)
  _unit_interval(config, a + 'gray_prob', open_=False)
  lo = _require(config, a + 'min_bits', lambda v: _is_int(v) and 1 <= v <= 8,
                'an integer in [1, 8]')
  _require(config, a + 'max_bits', lambda v: _is_int(v) and lo <= v <= 8,
           f'an integer in [min_bits={lo}, 8]')
  t = p + 'target.'
  crop = _require(config, t + 'crop', lambda v: _is_int(v) and 0 < v <= patch,
                  f'an integer in [1, patch_size={patch}]')
  _require(config, t + 'size',
           lambda v: _is_int(v) and v >= 2 and v & (v - 1) == 0 and crop % v == 0,
           f'a power of two >= 2 that divides target.crop={crop}')
  _require(config, t + 'bits', lambda v: _is_int(v) and 1 <= v <= 8, 'an integer in [1, 8]')
  _require(config, t + 'label_noise', lambda v: _is_number(v) and 0 <= v < 1,
           'a number in [0, 1)')
  m = p + 'model.'
  _require(config, m + 'stage_sizes',
           lambda v: len(v) >= 1 and all(_is_int(s) and s > 0 for s in v),
           'a non-empty tuple of positive integers')
  for k in ('resnet_width', 'stem_width', 'num_layers', 'mlp_ratio', 'decoder_width',
            'decoder_blocks'):
    positive_int(config, m + k)
  width = positive_int(config, m + 'width')
  for k in ('heads', 'pool_heads'):
    _require(config, m + k, lambda v: _is_int(v) and v > 0 and width % v == 0,
             f'a positive integer that divides model.width={width}')
  _require(config, m + 'remat', lambda v: isinstance(v, bool), 'True or False')


def validate_randsac(config: ml_collections.ConfigDict) -> None:
  """RandSAC's keys: patches, segments and their hierarchy, loss, model."""
  from ssl_jax import masking
  from ssl_jax.models.randsac import ARCHITECTURES
  r = 'randsac.'
  size = config.data.image_size
  patch = _require(config, r + 'patch_size',
                   lambda v: _is_int(v) and v > 0 and size % v == 0,
                   f'a positive integer that divides data.image_size={size}')
  grid = size // patch
  n = grid * grid
  s = r + 'segments.'
  kind = one_of(config, s + 'kind', masking.SEGMENT_KINDS)
  counts = _require(config, s + 'counts',
                    lambda v: len(v) >= 1 and all(_is_int(c) for c in v)
                    and 2 <= v[0] <= n and all(a > b >= 1 for a, b in zip(v, v[1:])),
                    f'a non-empty tuple of segment counts, finest first and decreasing '
                    f'(e.g. (16, 4): 16 segments grouped into 4 partitions), the first in '
                    f'[2, {n}] (the {grid}x{grid} tokens; one segment leaves nothing to '
                    'predict)')
  if kind == 'square':
    sides = []
    for level, count in enumerate(counts):
      try:
        sides.append(masking.square_side((grid, grid), count))
      except ValueError:
        allowed = [(grid // m) ** 2 for m in range(1, grid + 1) if grid % m == 0]
        raise ConfigError(
            f'config.{s}counts={tuple(counts)!r} is not allowed: {count} squares do not tile '
            f'the {grid}x{grid} token grid; square counts for it: '
            + ', '.join(map(str, sorted(allowed, reverse=True)))) from None
    for fine, coarse in zip(sides, sides[1:]):
      if coarse % fine:
        raise ConfigError(f'config.{s}counts={tuple(counts)!r} is not allowed: {fine}x{fine} '
                          f'squares do not nest in {coarse}x{coarse} partitions')
  order = one_of(config, s + 'order', masking.ORDERS)
  if order == 'raster' and kind != 'square':
    raise ConfigError(f"config.{s}order='raster' is not allowed with kind={kind!r}: blobs have "
                      "no raster order; use order='random' (or kind='square')")
  _require(config, s + 'coherent', lambda v: isinstance(v, bool), 'True or False')
  _require(config, s + 'blob_mean', lambda v: len(v) == 2 and all(map(_is_number, v))
           and v[0] <= v[1], 'a pair (lo, hi) with lo <= hi (token positions are in [-2, 2])')
  _require(config, s + 'blob_std', lambda v: len(v) == 2 and all(map(_is_number, v))
           and 0 < v[0] <= v[1], 'a pair (lo, hi) with 0 < lo <= hi')
  _require(config, r + 'norm_pix_loss', lambda v: isinstance(v, bool), 'True or False')
  m = r + 'model.'
  one_of(config, m + 'architecture', ARCHITECTURES)
  width = _require(config, m + 'width', lambda v: _is_int(v) and v > 0 and v % 4 == 0,
                   'a positive multiple of 4 (2D sine-cosine position encodings)')
  for k in ('num_layers', 'mlp_ratio', 'decoder_layers'):
    positive_int(config, m + k)
  for k in ('heads', 'decoder_heads'):
    _require(config, m + k, lambda v: _is_int(v) and v > 0 and width % v == 0,
             f'a positive integer that divides model.width={width}')
  _require(config, m + 'drop_path', lambda v: _is_number(v) and 0 <= v < 1,
           'a number in [0, 1)')
  _require(config, m + 'remat', lambda v: isinstance(v, bool), 'True or False')


def validate_igpt(config: ml_collections.ConfigDict) -> None:
  """iGPT's keys: objective, reading order, palette, model and context."""
  from ssl_jax.objectives import igpt
  g = 'igpt.'
  objective = one_of(config, g + 'objective', igpt.OBJECTIVES)
  one_of(config, g + 'order', igpt.ORDERS)
  _require(config, g + 'order_seed', lambda v: _is_int(v) and v >= 0, 'an integer >= 0')
  vocab = _require(config, g + 'vocab_size', lambda v: _is_int(v) and v >= 2,
                   'an integer >= 2 (the palette\'s number of colours; the paper: 512)')
  _unit_interval(config, g + 'bert_mask_rate', open_=True)
  _require(config, g + 'bert_eval_masks', lambda v: _is_int(v) and v >= 0,
           'an integer >= 0 (masks averaged when evaluating a BERT model; 0: none)')
  p = g + 'palette.'
  _require(config, p + 'path', lambda v: isinstance(v, str),
           "a palette file (.npy [vocab_size, 3]) or '' (the dataset's default palette)")
  _require(config, p + 'fit_if_missing', lambda v: isinstance(v, bool), 'True or False')
  positive_int(config, p + 'fit_images')
  _require(config, p + 'fit_pixels', lambda v: _is_int(v) and v >= vocab,
           f'an integer >= igpt.vocab_size={vocab}')
  positive_int(config, p + 'fit_iterations')
  _require(config, p + 'fit_seed', lambda v: _is_int(v) and v >= 0, 'an integer >= 0')
  m = g + 'model.'
  width = positive_int(config, m + 'width')
  for k in ('num_layers', 'mlp_ratio'):
    positive_int(config, m + k)
  _require(config, m + 'heads', lambda v: _is_int(v) and v > 0 and width % v == 0,
           f'a positive integer that divides model.width={width}')
  size = config.data.image_size
  context = positive_int(config, m + 'context')
  if size * size > context:
    fits = int(context ** 0.5)
    raise ConfigError(
        f'config.data.image_size={size} is not allowed with igpt.model.context={context}: '
        f'{size}x{size} = {size * size} tokens do not fit; use data.image_size <= {fits} or '
        f'model.context >= {size * size} (the paper: 32 -> 1024, 48 -> 2304, 64 -> 4096)')
  _require(config, m + 'remat', lambda v: isinstance(v, bool), 'True or False')
  del objective


def validate_online_probe(config: ml_collections.ConfigDict) -> None:
  _require(config, 'online_probe.representation', lambda v: isinstance(v, str),
           "a representation name, or '' for no online probe")
  _require(config, 'online_probe.lr', lambda v: _is_number(v) and v > 0, 'a number > 0')


CLASSIFICATION = 'classification'


def validate_classification(config: ml_collections.ConfigDict) -> None:
  """A linear probe or fine-tune: its backbone, init checkpoint and head."""
  from ssl_jax import tasks  # tasks imports the models; keep this module light
  one_of(config, 'backbone.objective', sorted(objectives.REGISTRY))
  if config.backbone.data.image_size != config.data.image_size:
    raise ConfigError(
        f'config.data.image_size={config.data.image_size} is not allowed: must equal '
        f'config.backbone.data.image_size={config.backbone.data.image_size}, the size '
        'the backbone was pretrained at')
  BACKBONE_VALIDATORS[config.backbone.objective](config.backbone)
  _require(config, 'init.workdir', lambda v: v is None or (isinstance(v, str) and v),
           "the pretraining run's --workdir, or None for a randomly initialised backbone")
  _require(config, 'init.step', lambda v: v is None or (_is_int(v) and v > 0),
           'None (the latest checkpoint) or a step > 0')
  c = 'classifier.'
  one_of(config, c + 'mode', tasks.MODES)
  one_of(config, c + 'head', tasks.HEADS)
  _require(config, c + 'representation', lambda v: isinstance(v, str) and v,
           'a representation name')
  _require(config, c + 'dropout', lambda v: _is_number(v) and 0 <= v < 1, 'a number in [0, 1)')
  _require(config, c + 'label_smoothing', lambda v: _is_number(v) and 0 <= v < 1,
           'a number in [0, 1)')
  _require(config, c + 'mask_ratio', lambda v: _is_number(v) and 0 <= v < 1,
           'a number in [0, 1) (fraction of patches masked while fine-tuning)')
  backbone = objectives.REGISTRY[config.backbone.objective]
  if config.classifier.mask_ratio and not getattr(backbone, 'supports_finetune_masking', True):
    raise ConfigError(f'config.classifier.mask_ratio={config.classifier.mask_ratio} is not '
                      f'allowed with backbone {config.backbone.objective!r}: must be 0 (it '
                      'fine-tunes on whole images)')
  if config.classifier.mode == 'linear' and config.classifier.mask_ratio:
    raise ConfigError(f'config.classifier.mask_ratio={config.classifier.mask_ratio} is not '
                      "allowed with classifier.mode='linear': must be 0 (the frozen "
                      'backbone sees whole images)')
  _require(config, c + 'whiten', lambda v: isinstance(v, bool), 'True or False')
  if config.classifier.whiten and config.classifier.mode != 'linear':
    raise ConfigError(f'config.classifier.whiten=True is not allowed with classifier.mode='
                      f"{config.classifier.mode!r}: the whitening is fitted once to frozen "
                      'features, so it needs mode=\'linear\' (or set whiten=False)')
  _require(config, c + 'whiten_examples', lambda v: _is_int(v) and v >= 2,
           'an integer >= 2 (training images whose features fit the whitening)')
  for key in ('mixup', 'cutmix'):
    _require(config, c + key, lambda v: _is_number(v) and v >= 0,
             'a number >= 0 (the Beta distribution\'s alpha; 0: off)')
  decay = _require(config, c + 'layer_decay', lambda v: _is_number(v) and 0 < v <= 1,
                   'a number in (0, 1] (1: no layer-wise decay)')
  if decay != 1 and not hasattr(backbone, 'layer_of'):
    raise ConfigError(f'config.classifier.layer_decay={decay} is not allowed with backbone '
                      f'{config.backbone.objective!r}: must be 1 (its layers are not '
                      'numbered for layer-wise decay)')
  weight = _require(config, c + 'generative_weight', lambda v: _is_number(v) and v >= 0,
                    'a number >= 0 (weight of the backbone\'s own loss while fine-tuning; 0: '
                    'off)')
  if weight and (config.classifier.mode != 'finetune'
                 or not hasattr(backbone, 'finetune_features')):
    raise ConfigError(f'config.classifier.generative_weight={weight} is not allowed with '
                      f'classifier.mode={config.classifier.mode!r} and backbone '
                      f'{config.backbone.objective!r}: must be 0 (it needs a fine-tune of a '
                      'backbone with a generative loss, e.g. igpt)')
  if (config.backbone.objective == 'igpt' and config.init.workdir is None
      and not config.backbone.igpt.palette.path):
    raise ConfigError('config.backbone.igpt.palette.path=\'\' is not allowed with '
                      'init.workdir=None: a randomly initialised iGPT backbone needs a palette '
                      'file (a checkpoint carries its own)')
  _require(config, 'data.randaugment',
           lambda v: len(v) == 0 or (len(v) == 3 and _is_int(v[0]) and v[0] >= 1
                                     and _is_number(v[1]) and 0 <= v[1] <= 10
                                     and _is_number(v[2]) and v[2] >= 0),
           '() (off) or (num_ops >= 1, magnitude in [0, 10], magnitude_std >= 0), '
           'e.g. (2, 9, 0.5)')
  _require(config, 'data.label_fraction', lambda v: _is_number(v) and 0 < v <= 1,
           'a number in (0, 1] (the fraction of training labels used)')
  _require(config, 'data.subset_seed', lambda v: _is_int(v) and v >= 0, 'an integer >= 0')
  if 'feature_probe' in config:
    validate_feature_probe(config)
  s = 'sweep.'
  for key in ('batch_size', 'lr'):
    _require(config, s + key, lambda v: len(v) >= 1 and all(_is_number(x) and x > 0 for x in v),
             'a non-empty tuple of positive numbers')
  _require(config, s + 'epochs', lambda v: v is None or (_is_number(v) and v > 0),
           'None (every run takes total_steps) or a number of epochs > 0')


def validate_feature_probe(config: ml_collections.ConfigDict) -> None:
  """The logistic-regression probes of --layer_sweep / --low_data."""
  f = 'feature_probe.'
  _require(config, f + 'train_examples', lambda v: _is_int(v) and v >= 2, 'an integer >= 2')
  _require(config, f + 'layers', lambda v: all(isinstance(x, str) and x for x in v),
           "a tuple of representation names (() for all), e.g. ('layer_4', 'layer_8')")
  _require(config, f + 'l2_grid', lambda v: len(v) >= 1 and all(
      _is_number(x) and x >= 0 for x in v), 'a non-empty tuple of numbers >= 0')
  _unit_interval(config, f + 'val_fraction', open_=True)
  positive_int(config, f + 'steps')
  _require(config, f + 'shots', lambda v: len(v) >= 1 and all(_is_int(x) and x > 0 for x in v),
           'a non-empty tuple of labels per class, e.g. (4, 25, 400)')
  positive_int(config, f + 'seeds')
  _require(config, f + 'low_data_l2', lambda v: _is_number(v) and v >= 0, 'a number >= 0')


VALIDATORS = {'igpt': lambda c: (validate_igpt(c), validate_online_probe(c)),
              'patchformer': lambda c: (validate_patchformer(c), validate_online_probe(c)),
              'randsac': lambda c: (validate_randsac(c), validate_online_probe(c)),
              CLASSIFICATION: validate_classification}
BACKBONE_VALIDATORS = {'igpt': validate_igpt, 'patchformer': validate_patchformer,
                       'randsac': validate_randsac, 'pixels': lambda c: None}


def validate(config: ml_collections.ConfigDict, num_devices: int,
             num_processes: int = 1) -> None:
  """Raises ConfigError on the first impossible value."""
  validate_common(config, num_devices, num_processes)
  VALIDATORS[config.objective](config)


def validate_representations(config: ml_collections.ConfigDict, available) -> None:
  """Representation names against what the model offers (needs the model
  built, so the loop calls it after `validate`, still before compiling)."""
  keys = ['eval.representation'] if config.eval.monitors else []
  keys += ['classifier.representation'] if config.objective == CLASSIFICATION else [
      'online_probe.representation']
  for key in keys:
    name = _get(config, key)
    if key == 'online_probe.representation' and not name:
      continue
    if name not in available:
      raise ConfigError(f'config.{key}={name!r} is not allowed: must be one of '
                        + ', '.join(map(repr, available)))


def to_json(config: ml_collections.ConfigDict) -> str:
  """A stable JSON form of the config, saved next to checkpoints."""
  return json.dumps(config.to_dict(), sort_keys=True, default=list)


# Keys that may change when a run resumes: they change neither the state's
# structure nor the values a step computes.
RESUMABLE_KEYS = ('total_steps', 'log_every', 'checkpoint.every', 'checkpoint.keep',
                  'data.data_dir', 'sharding.rule', 'sharding.fsdp_axis_size',
                  'sharding.fsdp_min_size', 'init.workdir', 'init.step')
# Evaluation reads the state and never changes it.
RESUMABLE_PREFIXES = ('eval.', 'sweep.', 'feature_probe.')


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def incompatible_keys(saved: dict, current: dict) -> list[str]:
  """Keys whose values differ between a checkpoint's config and this run's,
  other than RESUMABLE_KEYS and RESUMABLE_PREFIXES."""
  a, b = flatten(saved), flatten(current)
  keys = sorted(set(a) | set(b))
  return [k for k in keys if a.get(k, '<missing>') != b.get(k, '<missing>')
          and k not in RESUMABLE_KEYS and not k.startswith(RESUMABLE_PREFIXES)]


__all__ = ['ConfigError', 'validate', 'to_json', 'incompatible_keys']
