"""Input data: the built-in shapes dataset and the index-based pipeline.

The names below load on first use (PEP 562), each from its module: the
methods and config validation take ``ViewSpec`` and ``DataError`` without
loading TensorFlow, which only the pipeline's and the dataset's names need.
"""

import importlib

_WHERE = {  # name: (module, attribute)
    'CLASS_NAMES': ('shapes', 'CLASS_NAMES'),
    'DataError': ('errors', 'DataError'),
    'ViewSpec': ('options', 'ViewSpec'),
    'prepare_shapes': ('shapes', 'prepare'),
    'render': ('shapes', 'render'),
    **{name: ('pipeline', name) for name in (
        'FolderSource', 'Source', 'SubsetSource', 'TfdsSource', 'class_balanced_subset',
        'class_spread_ids', 'example_ids', 'imagenet_subset_name', 'iterate',
        'iterate_numpy', 'make_dataset', 'make_source', 'measure_throughput')},
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
  if name not in _WHERE:  # a submodule not imported yet: the import system loads it
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attribute = _WHERE[name]
  value = getattr(importlib.import_module(f'{__name__}.{module}'), attribute)
  globals()[name] = value  # found here from now on
  return value


def __dir__():
  return sorted(set(globals()) | set(_WHERE))
