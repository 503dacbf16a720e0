"""Input data: the built-in shapes dataset and the index-based pipeline."""

from ssl_jax.data.pipeline import class_balanced_subset
from ssl_jax.data.pipeline import class_spread_ids
from ssl_jax.data.pipeline import DataError
from ssl_jax.data.pipeline import example_ids
from ssl_jax.data.pipeline import FolderSource
from ssl_jax.data.pipeline import imagenet_subset_name
from ssl_jax.data.pipeline import iterate
from ssl_jax.data.pipeline import iterate_numpy
from ssl_jax.data.pipeline import make_dataset
from ssl_jax.data.pipeline import make_source
from ssl_jax.data.pipeline import measure_throughput
from ssl_jax.data.pipeline import Source
from ssl_jax.data.pipeline import SubsetSource
from ssl_jax.data.pipeline import TfdsSource
from ssl_jax.data.views import ViewSpec
from ssl_jax.data.shapes import CLASS_NAMES
from ssl_jax.data.shapes import prepare as prepare_shapes
from ssl_jax.data.shapes import render

__all__ = [
    'CLASS_NAMES',
    'DataError',
    'ViewSpec',
    'FolderSource',
    'Source',
    'SubsetSource',
    'TfdsSource',
    'class_balanced_subset',
    'class_spread_ids',
    'example_ids',
    'imagenet_subset_name',
    'iterate',
    'iterate_numpy',
    'make_dataset',
    'make_source',
    'measure_throughput',
    'prepare_shapes',
    'render',
]
