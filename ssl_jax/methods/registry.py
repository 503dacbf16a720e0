"""Method names -> their packages, imported lazily (only the method a run
uses is imported, and the core never imports a method's package directly).

Adding a method is one line here: its name (its config block and
`config.objective`) and the module that defines its `Method` subclass as
`METHOD`.
"""

from __future__ import annotations

import importlib

from ssl_jax.methods.base import Method

METHODS = {
    'dv2': 'ssl_jax.methods.dv2',
    'igpt': 'ssl_jax.methods.igpt',
    'mae': 'ssl_jax.methods.mae',
    'multitask_vit': 'ssl_jax.methods.multitask_vit',
    'patchformer': 'ssl_jax.methods.patchformer',
    'pixels': 'ssl_jax.methods.pixels',
    'randsac': 'ssl_jax.methods.randsac',
    'selfie': 'ssl_jax.methods.selfie',
}


def names() -> tuple[str, ...]:
  return tuple(sorted(METHODS))


def get(name: str) -> type[Method]:
  """The Method subclass registered as `name` (KeyError names the choices)."""
  if name not in METHODS:
    raise KeyError(f'no method {name!r}; registered: {", ".join(names())}')
  method = importlib.import_module(METHODS[name]).METHOD
  if not (isinstance(method, type) and issubclass(method, Method)) or method.name != name:
    raise TypeError(f'{METHODS[name]}.METHOD must be a Method subclass named {name!r}')
  return method


def self_supervised() -> tuple[str, ...]:
  """Names of the methods that pretrain (those with a loss)."""
  return tuple(n for n in names() if get(n).self_supervised)
