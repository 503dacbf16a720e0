"""Config checks that import nothing of ssl_jax.

Configs are locked (`ml_collections`): an unknown key or a value of the wrong
type is rejected by the flag parser. The checks here raise `ConfigError` with
one line that names the key and what is allowed; the core's validation
(ssl_jax.core.validation) and each method's `validate` are built from them.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  value = config
  for part in key.split('.'):
    value = value[part]
  return value


def require(config, key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
  try:
    value = get(config, key)
  except (KeyError, AttributeError):
    raise ConfigError(f'config.{key} is missing; it must be {allowed}') from None
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    raise ConfigError(f'config.{key}={value!r} is not allowed: must be {allowed}')
  return value


def construct(config, key: str, factory: Callable[..., Any], allowed: str) -> Any:
  """factory(**config.KEY): a block of keyword arguments turned into an
  object (e.g. ssl_jax.data.ViewSpec); its ValueError or TypeError (a bad
  value, an unknown key) becomes a ConfigError that names the key."""
  try:
    block = get(config, key)
  except (KeyError, AttributeError):
    raise ConfigError(f'config.{key} is missing; it must be {allowed}') from None
  try:
    return factory(**block.to_dict())
  except (ValueError, TypeError) as e:
    raise ConfigError(f'config.{key} is not allowed: {e} (it must be {allowed})') from None


def is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(config, key):
  return require(config, key, lambda v: is_int(v) and v > 0, 'an integer > 0')


def unit_interval(config, key, *, open_: bool):
  if open_:
    return require(config, key, lambda v: is_number(v) and 0 < v < 1,
                   'a number in (0, 1)')
  return require(config, key, lambda v: is_number(v) and 0 <= v <= 1,
                 'a number in [0, 1]')


def range_pair(config, key, lo_bound=0.0):
  return require(
      config, key,
      lambda v: len(v) == 2 and all(map(is_number, v)) and lo_bound <= v[0] <= v[1],
      f'a pair (lo, hi) with {lo_bound} <= lo <= hi')


def one_of(config, key, allowed):
  return require(config, key, lambda v: v in allowed,
                 'one of ' + ', '.join(repr(a) for a in allowed))


def boolean(config, key):
  return require(config, key, lambda v: isinstance(v, bool), 'True or False')


def to_json(config: ml_collections.ConfigDict) -> str:
  """A stable JSON form of the config, saved next to checkpoints."""
  return json.dumps(config.to_dict(), sort_keys=True, default=list)


# Keys that may change when a run resumes: they change neither the state's
# structure nor the values a step computes.
RESUMABLE_KEYS = ('total_steps', 'log_every', 'checkpoint.every', 'checkpoint.keep',
                  'checkpoint.keep_period',
                  'data.data_dir', 'backbone.data.data_dir', 'data.skip_bad_images',
                  'sharding.rule',
                  'sharding.fsdp_axis_size', 'sharding.fsdp_min_size', 'init.workdir',
                  'init.step')
# Evaluation reads the state and never changes it.
RESUMABLE_PREFIXES = ('eval.', 'sweep.', 'feature_probe.')
# The attention kernel (ssl_jax.nn.attention) computes the same function: a
# run started on one platform may resume on another.
RESUMABLE_SUFFIXES = ('.model.attention',)


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


# Keys added after checkpoints were first written, with the value that
# reproduces what a config without them did: a checkpoint whose config
# lacks one resumes when the current value is that one.
ADDED_KEYS = {'optimizer.name': 'adamw', 'data.held_out_examples': 0,
              'classifier.whiten_kind': 'full', 'classifier.head_init': 'zeros',
              'checkpoint.keep_period': 0}


def with_added_keys(saved: dict, added: dict | None = None) -> dict:
  """A copy of a saved config (a dict) in which every key of ADDED_KEYS and
  `added` (a method's) that it lacks holds its value there: the behaviour of
  the code that wrote it. A key is added only where its section exists (a
  pretraining config gets no `classifier.*`)."""
  out = copy.deepcopy(saved)
  for key, value in {**ADDED_KEYS, **(added or {})}.items():
    *sections, leaf = key.split('.')
    node = out
    for section in sections:
      node = node.get(section) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf not in node:
      node[leaf] = value
  return out


def differences(saved: dict, current: dict, keys: list[str], there: str, here: str) -> str:
  """'KEY (THERE: its saved value, HERE: its current value), ...' for the
  first five `keys` of the two flat configs, then ' and N more'."""
  shown = ', '.join(f'{k} ({there}: {saved.get(k, "<missing>")!r}, '
                    f'{here}: {current.get(k, "<missing>")!r})' for k in keys[:5])
  return shown + (f' and {len(keys) - 5} more' if len(keys) > 5 else '')


def incompatible_keys(saved: dict, current: dict, added: dict | None = None) -> list[str]:
  """Keys whose values differ between a checkpoint's config and this run's,
  other than RESUMABLE_KEYS, RESUMABLE_PREFIXES and RESUMABLE_SUFFIXES; a key missing from one
  side reads as its ADDED_KEYS (or `added`: a method's) value."""
  a, b = flatten(saved), flatten(current)
  keys = sorted(set(a) | set(b))
  defaults = {**ADDED_KEYS, **(added or {})}
  old = lambda d, k: d.get(k, defaults.get(k, '<missing>'))
  return [k for k in keys if old(a, k) != old(b, k)
          and k not in RESUMABLE_KEYS and not k.startswith(RESUMABLE_PREFIXES)
          and not k.endswith(RESUMABLE_SUFFIXES)]
