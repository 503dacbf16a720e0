"""The declared interface of a method: everything the core may ask of one.

A method is one paper's self-supervised objective (or a baseline backbone
such as raw pixels): its network, its on-device masks / segments /
transforms, its loss, its named representations and its tools. The core
(loop, step, tasks, evaluation) sees methods only through this class and
`ssl_jax.methods.registry`; it never probes for members. A method knows
nothing about meshes, optimizers, checkpoints or labels.

What a method declares (class attributes):
  name                 its registry name and its config block (`config[name]`)
  self_supervised      False for baselines that have no loss (raw pixels)
  architecture_keys    config keys that fix its parameters (data.image_size
                       too when the parameters depend on it): a checkpoint can
                       initialise a probe or fine-tune only if they match
  added_keys           {config key: value}: keys added to the method's config
                       after checkpoints were written, with the value those
                       checkpoints had (they resume and initialise probes as
                       if the key had been there)
  frozen_params        top-level parameter keys that never train (constants
                       carried by checkpoints, e.g. iGPT's palette)
  state_in_evaluation  'ignore' or 'frozen': what probes and fine-tunes do
                       with the method's non-gradient state ('frozen':
                       restored from the checkpoint and passed, unchanged,
                       to `represent`)
  batch_counts_views   True where `batch_size` counts views, not images (DV2's
                       "N/D images of D transformed versions", 3.6): the
                       pipeline then reads batch_size / len(views) images
                       per step; `validate` checks that it divides
Capabilities (each one False unless the method implements what it names):
  finetune_masking     `represent(mask_ratio > 0)` while fine-tuning
  layer_decay          `num_blocks` and `layer_of`, for layer-wise lr decay
  generative_finetune  `finetune_features`: fine-tunes that keep its loss
  draws_pictures       `pictures`, drawn at every evaluation
  samples              `sample_grids`, for `python -m ssl_jax.sample`
A capability is a class attribute; an instance may turn one off for its
configuration (iGPT's BERT objective does not sample), so the core reads
capabilities from the built method.

What it does (methods):
  validate(config)     classmethod: checks its own config block (and the
                       keys its network reads), raising ConfigError
  validate_probe(config)  classmethod: what a probe / fine-tune of it needs
  prepare(config)      classmethod: work before the run (e.g. fitting iGPT's
                       palette); the core calls it on process 0 only, the
                       other processes wait for it
  views(config)        classmethod: the views its batch needs (None: one)
  images_per_step(config)  classmethod: images read per step (from
                       batch_counts_views; not to be overridden)
  init, init_state, loss, representations, represent: see below.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import jax
import ml_collections

Params = Any
State = Any
Batch = dict[str, jax.Array]


class LossAux(NamedTuple):
  """What `Method.loss` returns besides the scalar loss."""
  metrics: dict[str, jax.Array]   # scalars to log
  features: dict[str, jax.Array]  # this training view's representations by name,
                                  # [batch, features] (the online probe reads them)
  state: State                    # the updated non-gradient state


class Method(abc.ABC):
  """Base class of every method (see the module docstring)."""

  name: ClassVar[str]
  self_supervised: ClassVar[bool] = True
  architecture_keys: ClassVar[tuple[str, ...]] = ()
  added_keys: ClassVar[dict[str, Any]] = {}
  frozen_params: ClassVar[tuple[str, ...]] = ()
  state_in_evaluation: ClassVar[str] = 'ignore'
  batch_counts_views: ClassVar[bool] = False
  finetune_masking: ClassVar[bool] = False
  layer_decay: ClassVar[bool] = False
  generative_finetune: ClassVar[bool] = False
  draws_pictures: ClassVar[bool] = False
  samples: ClassVar[bool] = False

  STATE_IN_EVALUATION = ('ignore', 'frozen')

  def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
    """`config`: a pretraining config, or a probe's `backbone` block (which
    holds `data.image_size` and the method's own block, no dataset)."""
    del config, dtype

  # -- before anything is built ------------------------------------------------

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """Raises ssl_jax.config.ConfigError on the first impossible value of
    the method's keys. Default: nothing to check."""
    del config

  @classmethod
  def validate_backbone(cls, config: ml_collections.ConfigDict) -> None:
    """The checks of the method's keys when its network is the backbone of
    a probe or fine-tune (`config`: the `backbone` block): keys only the
    self-supervised objective reads may be left unchecked. Default:
    `validate`."""
    cls.validate(config)

  @classmethod
  def validate_probe(cls, config: ml_collections.ConfigDict) -> None:
    """Checks of a probe or fine-tune of this method's network (`config`:
    the whole classification config; its `backbone` block is already
    validated). Default: nothing more to check."""
    del config

  @classmethod
  def prepare(cls, config: ml_collections.ConfigDict) -> None:
    """Work that must happen once before the run builds (process 0 only).
    `config`: a pretraining config, or the `backbone` block of a probe or
    fine-tune from random initialisation (no init.workdir). Default: none."""
    del config

  @classmethod
  def views(cls, config: ml_collections.ConfigDict):
    """The training views of each image: None (one view, the data block's
    crop and flip: batch['image'] [b, H, W, 3]) or a tuple of
    ssl_jax.data.ViewSpec (batch['image'] [b, V, H, W, 3]). The views
    share their geometry when `share_geometry(config)` is True."""
    del config
    return None

  @classmethod
  def share_geometry(cls, config: ml_collections.ConfigDict) -> bool:
    del config
    return False

  @classmethod
  def images_per_step(cls, config: ml_collections.ConfigDict) -> int:
    """Images the input pipeline reads per step (each with its views):
    `batch_size`, or batch_size / len(views) where `batch_counts_views`."""
    if not cls.batch_counts_views:
      return config.batch_size
    views = cls.views(config)
    return config.batch_size // (len(views) if views else 1)

  # -- parameters and state ------------------------------------------------------

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Batch, *, decoder: bool = True) -> Params:
    """Parameters; decoder=False: only those `represent` uses."""

  def init_state(self, rng: jax.Array, batch: Batch, params: Params) -> State:
    """The non-gradient state (updated inside the jitted step by `loss`,
    sharded like the parameters, checkpointed with them). Default: none."""
    del rng, batch, params
    return {}

  # -- training ------------------------------------------------------------------

  def loss(self, params: Params, batch: Batch, rng: jax.Array, *, train: bool = True,
           state: State = None) -> tuple[jax.Array, LossAux]:
    """(scalar loss, LossAux). Self-supervised methods implement it."""
    raise NotImplementedError(f'method {self.name!r} has no self-supervised loss')

  # -- representations -----------------------------------------------------------

  @abc.abstractmethod
  def representations(self) -> tuple[str, ...]:
    """The names `represent` returns."""

  @abc.abstractmethod
  def represent(self, params: Params, batch: Batch, *, state: State = None,
                rng: jax.Array | None = None, train: bool = False,
                mask_ratio: float = 0.0) -> dict[str, jax.Array]:
    """{name: [batch, features] float32}. Evaluation: train=False,
    mask_ratio=0. Fine-tuning: train=True (dropout, drop path, jitter on),
    and mask_ratio > 0 only with the `finetune_masking` capability."""

  def represent_draws(self, params: Params, batch: Batch, rng: jax.Array, *,
                      state: State = None) -> list[dict[str, jax.Array]]:
    """The evaluation features of every random draw an evaluation ensembles
    (a BERT model's masks), each from its own key folded from `rng`; one
    draw (`represent`) for methods that evaluate deterministically. A
    classifier averages its predicted probabilities over the draws; feature
    probes read `represent`, their average."""
    return [self.represent(params, batch, state=state, rng=rng)]

  # -- capabilities --------------------------------------------------------------

  @property
  def num_blocks(self) -> int:
    """Blocks of the backbone (layer_decay capability)."""
    raise NotImplementedError(f'method {self.name!r} has no numbered layers')

  def layer_of(self, path: tuple[str, ...]) -> int:
    """The layer of a backbone parameter (its key path): 0 embeddings, k
    block k, num_blocks + 1 what follows the blocks (layer_decay)."""
    raise NotImplementedError(f'method {self.name!r} has no numbered layers')

  def finetune_features(self, params: Params, batch: Batch, rng: jax.Array, *,
                        state: State = None) -> tuple[dict[str, jax.Array], jax.Array]:
    """(features by name, self-supervised loss) of one forward pass
    (generative_finetune)."""
    raise NotImplementedError(f'method {self.name!r} has no generative fine-tuning')

  def pictures(self, params: Params, images: jax.Array, rng: jax.Array, *,
               state: State = None) -> jax.Array:
    """uint8 [b, H', W', 3] panels of what the method does to images [b, H,
    W, 3] in [0, 1] (draws_pictures)."""
    raise NotImplementedError(f'method {self.name!r} draws no pictures')

  def sample_grids(self, params: Params, images: jax.Array, rng: jax.Array, *,
                   completions: int, temperature: float,
                   state: State = None) -> dict[str, jax.Array]:
    """{grid name: uint8 [b, H', W', 3]} of samples (samples capability)."""
    raise NotImplementedError(f'method {self.name!r} does not sample')
