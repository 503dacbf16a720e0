"""The multi-task ViT's transformations and labels, drawn on the device.

Everything here is a pure function of a PRNG key with static shapes. The
order inside one view (`corrupt`) is the whole contract between the tasks:

1. rotation: the view is turned by q quarter turns counter-clockwise
   (dm_pix.rot90's direction), q uniform in {0, 1, 2, 3} per view; the label
   is q. Everything after works on the turned view: patch indices, the
   relative-position offsets and the jigsaw positions are those of the grid
   the model sees, not of the original image.
2. relative-position pairs: an anchor cell i uniform over the grid, then a
   neighbour j uniform over those of its 8 neighbours inside the grid; the
   label is the offset of j from i (`OFFSETS`, reading order). Pairs are
   drawn independently, so two may share a cell.
3. patch sets, drawn among the cells no pair uses, disjoint: colorization
   (converted to grayscale), inpainting (their tokens replaced by the mask
   token) and jigsaw (their contents moved along one random cycle, so
   every chosen patch moves; the label of the token at a jigsaw cell is
   the cell its content came from).
4. the pairs' cells get a slight augmentation: a spatial jitter of up to
   `jitter` pixels, read from the view as step 3 left it (masked cells
   grey), so a strip of a neighbouring cell reveals nothing another task
   hides, and a colour jitter; without the position shortcut, the "no
   position" embedding instead of theirs. Adjacent pair patches abut (no
   gap: a patch of 4 pixels has no room for one), and with jitter may share
   up to 2 pixels: a low-level cue to adjacency that withholding position
   embeddings does not remove.

Targets are read from the turned, uncorrupted view: a colorization target
is the colour of a patch nobody else altered, an inpainting target the
pixels of a patch nobody else altered; a pair's patches are never another
task's cells, and what they show of their neighbours is what the model
sees there (tests/test_multitask_vit.py perturbs the hidden pixels and
checks that no input outside their cells moves).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.nn import colour as colour_lib
from ssl_jax.nn.patches import gather, normalise_patches, patchify, unpatchify

# (row, column) of the neighbour j relative to the anchor i; class k = OFFSETS[k].
OFFSETS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)],
                   np.int32)


def rotate(images: jax.Array, quarters: jax.Array) -> jax.Array:
  """images [b, S, S, C] turned by quarters [b] (each in 0..3) quarter turns
  counter-clockwise."""
  # A per-example select (no gather across the batch: sharded over the
  # batch, each device turns its own examples).
  out = images
  for k in range(1, 4):
    out = jnp.where((quarters == k)[:, None, None, None], pix.rot90(images, k), out)
  return out


class Pairs(NamedTuple):
  anchor: jax.Array     # [b, P] cell index of i
  neighbour: jax.Array  # [b, P] cell index of j
  label: jax.Array      # [b, P] in 0..7: the offset of j from i


def sample_pairs(key: jax.Array, batch: int, grid: tuple[int, int], num_pairs: int) -> Pairs:
  """Anchors uniform over the cells, neighbours uniform over the anchor's
  neighbours inside the grid (a corner has 3, an edge 5, the inside 8)."""
  gh, gw = grid
  k_anchor, k_offset = jax.random.split(key)
  anchor = jax.random.randint(k_anchor, (batch, num_pairs), 0, gh * gw)
  rows = anchor[..., None] // gw + OFFSETS[:, 0]  # [b, P, 8]
  cols = anchor[..., None] % gw + OFFSETS[:, 1]
  inside = (rows >= 0) & (rows < gh) & (cols >= 0) & (cols < gw)
  label = jax.random.categorical(k_offset, jnp.where(inside, 0.0, -jnp.inf))
  pick = lambda x: jnp.take_along_axis(x, label[..., None], -1)[..., 0]
  return Pairs(anchor, pick(rows) * gw + pick(cols), label)


def offset_label(anchor: jax.Array, neighbour: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """The class of neighbour's offset from anchor (-1 where not neighbours)."""
  gw = grid[1]
  dr = neighbour // gw - anchor // gw
  dc = neighbour % gw - anchor % gw
  match = (dr[..., None] == OFFSETS[:, 0]) & (dc[..., None] == OFFSETS[:, 1])
  return jnp.where(match.any(-1), jnp.argmax(match, -1), -1)


def disjoint_sets(key: jax.Array, batch: int, num_cells: int, excluded: jax.Array,
                  counts: tuple[int, ...]) -> tuple[jax.Array, ...]:
  """Disjoint random cell sets of the given sizes ([b, k] each, in random
  order), none of them among `excluded` [b, e]. Needs num_cells - e >=
  sum(counts) (the config's check)."""
  noise = jax.random.uniform(key, (batch, num_cells))
  taken = cell_flags(batch, num_cells, excluded)
  order = jnp.argsort(jnp.where(taken, 2.0, noise), axis=-1)
  out, start = [], 0
  for k in counts:
    out.append(order[:, start:start + k])
    start += k
  return tuple(out)


def jigsaw_sources(cells: jax.Array) -> jax.Array:
  """The cell whose content moves to each jigsaw cell: the next one of the
  set (cells [b, k] are in random order, so this is a uniformly random
  k-cycle: every chosen patch moves)."""
  return jnp.roll(cells, -1, axis=1)


@dataclasses.dataclass(frozen=True)
class PairAugment:
  """The relative-position patches' slight augmentation (Doersch et al.
  jitter the patches' positions and fight chromatic shortcuts)."""
  jitter: int = 1             # pixels, each direction
  brightness: float = 0.1     # max |delta| in [0, 1] units
  contrast: float = 0.1       # factor in [1 - c, 1 + c]
  saturation: float = 0.1
  hue: float = 0.02           # max |delta| as a fraction of a turn


def jittered_patches(key: jax.Array, images: jax.Array, patch: int,
                     grid: tuple[int, int], jitter: int) -> jax.Array:
  """[b, N, p, p, C]: every cell's patch read up to `jitter` pixels away
  from its place in images [b, H, W, C] (clamped inside the image), one
  shift per cell."""
  b, n = images.shape[0], grid[0] * grid[1]
  cells = jnp.arange(n)
  shift = jax.random.randint(key, (b, n, 2), -jitter, jitter + 1)
  top = jnp.clip(cells // grid[1] * patch + shift[..., 0], 0, images.shape[1] - patch)
  left = jnp.clip(cells % grid[1] * patch + shift[..., 1], 0, images.shape[2] - patch)

  def one(image, t, l):
    return jax.lax.dynamic_slice(image, (t, l, 0), (patch, patch, image.shape[-1]))

  return jax.vmap(lambda im, ts, ls: jax.vmap(lambda t, l: one(im, t, l))(ts, ls))(
      images, top, left)


def colour_jitter(key: jax.Array, patches: jax.Array, aug: PairAugment) -> jax.Array:
  """Per patch [..., p, p, 3] in [0, 1]: brightness, contrast, saturation,
  hue (dm-pix), each factor drawn uniformly per patch."""
  flat = patches.reshape((-1,) + patches.shape[-3:])
  kb, kc, ks, kh = jax.random.split(key, 4)
  n = flat.shape[0]
  u = lambda k, r: jax.random.uniform(k, (n,), minval=-r, maxval=r)
  db, dc, ds, dh = u(kb, aug.brightness), u(kc, aug.contrast), u(ks, aug.saturation), u(kh, aug.hue)

  def one(x, b, c, s, h):
    x = pix.adjust_brightness(x, b)
    x = pix.adjust_contrast(x, 1.0 + c)
    x = pix.adjust_saturation(jnp.clip(x, 0.0, 1.0), 1.0 + s)
    return jnp.clip(pix.adjust_hue(x, h), 0.0, 1.0)

  return jax.vmap(one)(flat, db, dc, ds, dh).reshape(patches.shape)


def grayscale(patches: jax.Array) -> jax.Array:
  """[..., 3] -> the luma (ITU-R BT.601, dm-pix's) in all three channels."""
  return pix.rgb_to_grayscale(patches, keep_dims=True)


TASKS = ('contrastive', 'rotation', 'colorization', 'inpainting', 'relative_position', 'jigsaw')
# Tasks whose transformation is applied to the view (contrastive needs only
# the two augmented views the pipeline makes).
TRANSFORMS = ('rotation', 'relative_position', 'colorization', 'inpainting', 'jigsaw')


@dataclasses.dataclass(frozen=True)
class Spec:
  """What `corrupt` draws: the grid, the patch size, and per task its count
  (see configs/multitask_vit.py)."""
  grid: tuple[int, int]
  patch: int
  num_pairs: int = 0
  colour_patches: int = 0
  inpaint_patches: int = 0
  jigsaw_patches: int = 0
  withhold_positions: bool = False  # the pairs' position embeddings withheld
  pair_augment: PairAugment = PairAugment()

  @property
  def num_cells(self) -> int:
    return self.grid[0] * self.grid[1]


class View(NamedTuple):
  """One batch of views after `corrupt` (absent tasks: None)."""
  pixels: jax.Array             # [b, N, p, p, 3] in [0, 1]: the turned view, uncorrupted
  inputs: jax.Array             # [b, N, p, p, 3]: what the model reads
  masked: jax.Array | None      # [b, N] bool: inpainting's cells (mask token)
  unpositioned: jax.Array | None  # [b, N] bool: pairs without position embedding
  quarters: jax.Array | None    # [b] rotation labels
  pairs: Pairs | None
  colour: jax.Array | None      # [b, kc] grayscale cells
  inpaint: jax.Array | None     # [b, ki]
  jigsaw: jax.Array | None      # [b, kj] cells whose content moved
  jigsaw_source: jax.Array | None  # [b, kj] where each one's content came from


def scatter_cells(x: jax.Array, cells: jax.Array, values: jax.Array) -> jax.Array:
  """x [b, N, ...] with x[i, cells[i, j]] = values[i, j] (distinct cells per
  row); vmapped over the batch, so a sharded batch needs no collective."""
  return jax.vmap(lambda x, c, v: x.at[c].set(v))(x, cells, values)


def cell_flags(batch: int, num_cells: int, cells: jax.Array) -> jax.Array:
  """[b, N] bool: True at cells [b, k] (repeats allowed)."""
  return jax.vmap(lambda c: jnp.zeros((num_cells,), bool).at[c].set(True))(cells)


def corrupt(key: jax.Array, images: jax.Array, spec: Spec, active: tuple[str, ...]) -> View:
  """images [b, S, S, 3] in [0, 1] -> View, applying the transformations of
  the `active` tasks (TRANSFORMS) in the order of the module docstring. A
  task not active draws nothing and costs nothing."""
  b, n, p = images.shape[0], spec.num_cells, spec.patch
  k_rot, k_pairs, k_sets, k_jitter, k_colour = jax.random.split(key, 5)
  quarters = pairs = colour = inpaint = jigsaw = source = masked = unpositioned = None
  if 'rotation' in active:
    quarters = jax.random.randint(k_rot, (b,), 0, 4)
    images = rotate(images, quarters)
  pixels = patchify(images, p)
  inputs = pixels
  excluded = jnp.zeros((b, 0), jnp.int32)
  if 'relative_position' in active:
    pairs = sample_pairs(k_pairs, b, spec.grid, spec.num_pairs)
    excluded = jnp.concatenate([pairs.anchor, pairs.neighbour], axis=1)
  counts = {'colorization': spec.colour_patches, 'inpainting': spec.inpaint_patches,
            'jigsaw': spec.jigsaw_patches}
  wanted = [t for t in counts if t in active]
  if wanted:
    drawn = dict(zip(wanted, disjoint_sets(k_sets, b, n, excluded, tuple(counts[t] for t in wanted))))
    colour, inpaint, jigsaw = (drawn.get(t) for t in ('colorization', 'inpainting', 'jigsaw'))
  if colour is not None:
    inputs = scatter_cells(inputs, colour, grayscale(gather(pixels, colour)))
  if jigsaw is not None:
    source = jigsaw_sources(jigsaw)
    inputs = scatter_cells(inputs, jigsaw, gather(pixels, source))
  if inpaint is not None:
    masked = cell_flags(b, n, inpaint)
  if pairs is not None:
    # The pairs' patches are read, jittered, from the view as the model sees
    # it (grayscale, moved, masked cells grey), so a strip of a neighbouring
    # cell shows nothing another task hides; each cell gets one jittered,
    # colour-jittered version, used wherever a pair takes it.
    seen = inputs if masked is None else jnp.where(masked[..., None, None, None], 0.5, inputs)
    canvas = unpatchify(seen.reshape(b, n, -1), spec.grid, p)
    moved = colour_jitter(k_colour, jittered_patches(k_jitter, canvas, p, spec.grid,
                                                     spec.pair_augment.jitter),
                          spec.pair_augment)
    in_pair = cell_flags(b, n, excluded)
    inputs = jnp.where(in_pair[..., None, None, None], moved, inputs)
    if spec.withhold_positions:
      unpositioned = in_pair
  return View(pixels, inputs, masked, unpositioned, quarters, pairs, colour, inpaint, jigsaw,
              source)


def colour_targets(patches: jax.Array, target: str, resolution: int,
                   bins: jax.Array) -> jax.Array:
  """The colorization targets of patches [b, k, p, p, 3] in [0, 1]:
  'mean'   their mean ab (CIE Lab) / 100: [b, k, 2], for a squared error;
  'pixels' ab pooled to a resolution x resolution grid per patch, each cell
           soft-encoded on the quantised ab bins: [b, k, r * r, Q]."""
  ab = colour_lib.rgb_to_lab(patches)[..., 1:]
  if target == 'mean':
    return ab.mean(axis=(-3, -2)) / 100.0
  b, k, p = patches.shape[:3]
  s = p // resolution
  pooled = ab.reshape(b, k, resolution, s, resolution, s, 2).mean(axis=(3, 5))
  return colour_lib.soft_encode(pooled.reshape(b, k, resolution * resolution, 2), bins)


def normalised_pixels(patches: jax.Array) -> jax.Array:
  """[b, k, p, p, 3] -> [b, k, p * p * 3], each patch to zero mean and unit
  variance (MAE's normalised-pixel target)."""
  return normalise_patches(patches.reshape(patches.shape[:2] + (-1,)))
