"""The multi-task ViT: every task's labels on hand-made examples, rotations
and the grid the labels refer to, disjoint corruptions that reach no other
task's target, the colour space, NT-Xent against numpy on 1 and 8 devices,
head shapes, no FLOPs for a disabled task, the weighting and the gradient
diagnostics, config checks, full-size shapes and end-to-end runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import _override, small_method_config, unoptimised_jit

from ssl_jax.config.checks import ConfigError
from ssl_jax.methods.multitask_vit import tasks as tasks_lib
from ssl_jax.nn.patches import patchify


def _config(**overrides):
  """The tiny config with a smaller ViT (fast to compile)."""
  from configs import multitask_vit
  c = multitask_vit.get_config('tiny')
  c.multitask_vit.model.update(dict(width=16, depth=1, heads=2, head_width=16))
  c.multitask_vit.diagnostics_every = 0
  return _override(c, overrides)


def _method(**overrides):
  from ssl_jax.methods.multitask_vit.method import MultiTaskViTMethod
  return MultiTaskViTMethod(_config(**overrides))


def _init(m, batch, decoder=True):
  """m.init, compiled (eager dispatch of the many small ops is slower)."""
  return unoptimised_jit(lambda k, b: m.init(k, b, decoder=decoder))(jax.random.key(0), batch)


_corrupt = unoptimised_jit(tasks_lib.corrupt, static_argnums=(2, 3))


def _batch(b=4, views=2, size=32, seed=0):
  images = np.random.default_rng(seed).uniform(size=(b, views, size, size, 3))
  return {'image': jnp.asarray(images, jnp.float32), 'label': jnp.zeros((b,), jnp.int32),
          'valid': jnp.ones((b,), bool)}


def _cell_image(grid=4, patch=2, seed=0):
  """[1, S, S, 3] whose patches are distinct constant colours."""
  colours = np.random.default_rng(seed).uniform(size=(grid * grid, 3))
  img = colours.reshape(grid, grid, 1, 1, 3).repeat(patch, 2).repeat(patch, 3)
  return jnp.asarray(img.transpose(0, 2, 1, 3, 4).reshape(1, grid * patch, grid * patch, 3),
                     jnp.float32)


# -- labels on hand-made examples ---------------------------------------------------


def test_the_eight_offsets_in_reading_order():
  # Around the centre of a 3x3 grid, the neighbours in reading order are classes 0..7.
  neighbours = jnp.array([0, 1, 2, 3, 5, 6, 7, 8])
  np.testing.assert_array_equal(tasks_lib.offset_label(jnp.full(8, 4), neighbours, (3, 3)),
                                np.arange(8))
  assert int(tasks_lib.offset_label(jnp.array(0), jnp.array(2), (3, 3))) == -1  # not adjacent
  assert tasks_lib.OFFSETS.tolist()[4] == [0, 1]  # class 4: the right-hand neighbour


def test_pairs_are_neighbours_inside_the_grid_with_their_offset_as_label():
  pairs = tasks_lib.sample_pairs(jax.random.key(0), 2000, (3, 4), 3)
  a, n, label = (np.asarray(x).ravel() for x in pairs)
  np.testing.assert_array_equal(np.asarray(tasks_lib.offset_label(a, n, (3, 4))), label)
  assert (n >= 0).all() and (n < 12).all()
  # A corner anchor has 3 neighbours, each drawn; the inside one all 8.
  assert set(label[a == 0]) == {4, 6, 7}
  inside = np.bincount(label[a == 5], minlength=8)
  assert (inside > 0).all() and inside.max() < 2.5 * inside.min()


def test_rotation_turns_counter_clockwise_per_example():
  x = jnp.arange(2 * 2 * 2 * 1, dtype=jnp.float32).reshape(2, 2, 2, 1)
  out = tasks_lib.rotate(x, jnp.array([1, 2]))
  np.testing.assert_array_equal(out[0, ..., 0], np.rot90(np.asarray(x[0, ..., 0]), 1))
  np.testing.assert_array_equal(out[1, ..., 0], np.rot90(np.asarray(x[1, ..., 0]), 2))
  # [[0, 1], [2, 3]] turned a quarter counter-clockwise: the top-right corner goes top-left.
  np.testing.assert_array_equal(out[0, ..., 0], [[1, 3], [0, 2]])


def test_labels_refer_to_the_grid_of_the_turned_view():
  """A view turned by q: its patches are the turned image's; jigsaw's moved
  contents and labels, and the pairs' offsets, are cells of that grid."""
  spec = tasks_lib.Spec(grid=(4, 4), patch=2, num_pairs=3, jigsaw_patches=5)
  image = jnp.broadcast_to(_cell_image(), (16, 8, 8, 3))
  view = _corrupt(jax.random.key(3), image, spec, ('rotation', 'relative_position', 'jigsaw'))
  q = np.asarray(view.quarters)
  assert set(q) == {0, 1, 2, 3}
  for i in range(16):
    turned = np.rot90(np.asarray(image[i]), q[i])
    np.testing.assert_array_equal(view.pixels[i], patchify(turned[None], 2)[0])
    cells, source = np.asarray(view.jigsaw[i]), np.asarray(view.jigsaw_source[i])
    assert sorted(cells) == sorted(source) and (cells != source).all()  # one cycle, all moved
    np.testing.assert_array_equal(np.asarray(view.inputs[i])[cells],
                                  np.asarray(view.pixels[i])[source])
  a, n = np.asarray(view.pairs.anchor), np.asarray(view.pairs.neighbour)
  rows, cols = n // 4 - a // 4, n % 4 - a % 4
  np.testing.assert_array_equal(tasks_lib.OFFSETS[np.asarray(view.pairs.label)],
                                np.stack([rows, cols], -1))
  # Without augmentation a pair's inputs are the turned view's cells (not the
  # unturned image's): the offset is read on the grid the model sees.
  still = tasks_lib.PairAugment(jitter=0, brightness=0.0, contrast=0.0, saturation=0.0,
                                hue=0.0)
  plain = _corrupt(jax.random.key(3), image, dataclasses.replace(spec, pair_augment=still),
                   ('rotation', 'relative_position'))
  for i in range(16):
    turned = patchify(np.rot90(np.asarray(image[i]), int(plain.quarters[i]))[None], 2)[0]
    for cell in np.concatenate([plain.pairs.anchor[i], plain.pairs.neighbour[i]]):
      np.testing.assert_allclose(plain.inputs[i][cell], turned[cell], atol=1e-6)


def test_corruptions_are_disjoint_and_leave_every_other_patch_alone():
  spec = tasks_lib.Spec(grid=(4, 4), patch=2, num_pairs=2, colour_patches=3,
                        inpaint_patches=3, jigsaw_patches=3, withhold_positions=True)
  image = jnp.broadcast_to(_cell_image(), (32, 8, 8, 3))
  view = _corrupt(jax.random.key(1), image, spec, tasks_lib.TRANSFORMS)
  for i in range(32):
    pair = set(np.asarray(view.pairs.anchor[i])) | set(np.asarray(view.pairs.neighbour[i]))
    sets = [set(np.asarray(x[i])) for x in (view.colour, view.inpaint, view.jigsaw)]
    assert all(len(s) == 3 for s in sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert not any(pair & s for s in sets)  # pairs are never another task's corruption
    assert set(np.flatnonzero(np.asarray(view.masked[i]))) == sets[1]
    assert set(np.flatnonzero(np.asarray(view.unpositioned[i]))) == pair
    gray = np.asarray(view.inputs[i])[sorted(sets[0])]
    np.testing.assert_allclose(gray, gray[..., :1].repeat(3, -1))  # grayscale
    untouched = np.array(sorted(set(range(16)) - pair - set.union(*sets)))
    np.testing.assert_array_equal(np.asarray(view.inputs[i])[untouched],
                                  np.asarray(view.pixels[i])[untouched])


def test_what_a_task_hides_reaches_no_other_input():
  """Same key, the source image changed only where a task hides something
  (the colour of grayscale cells, the pixels of masked cells): no input
  outside those cells moves, the relative-position pairs' jittered patches
  included, which read their neighbours' strips from the view as the model
  sees it. (A jigsaw cell's content is visible, moved: the pairs' strips
  show it moved, as the model sees it, by the same construction.)"""
  spec = tasks_lib.Spec(grid=(8, 8), patch=4, num_pairs=4, colour_patches=6,
                        inpaint_patches=6, jigsaw_patches=6)
  images = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3), minval=0.2, maxval=0.8)
  key = jax.random.key(4)
  view = _corrupt(key, images, spec, tasks_lib.TRANSFORMS)
  hidden = np.zeros((8, 64), bool)
  chroma = np.zeros((8, 64), bool)
  for i in range(8):
    hidden[i, np.asarray(view.inpaint[i])] = True
    chroma[i, np.asarray(view.colour[i])] = True
  # Turn the view back to image coordinates: corrupt turns first, so change
  # the turned view's cells and turn the change back.
  luma = np.array([0.2989, 0.5870, 0.1140])
  no_luma = np.cross(luma, [1.0, 0.0, 0.0])  # a colour change with the same luma
  noise = np.random.default_rng(1).uniform(-0.15, 0.15, size=(8, 64, 4, 4, 3))
  change = np.where(hidden[..., None, None, None], noise, 0.0)
  change += np.where(chroma[..., None, None, None], 0.5 * no_luma / np.linalg.norm(no_luma), 0.0)
  turned_change = np.asarray(jax.vmap(lambda c: c.reshape(8, 8, 4, 4, 3).transpose(
      0, 2, 1, 3, 4).reshape(32, 32, 3))(jnp.asarray(change)))
  back = np.stack([np.rot90(turned_change[i], -int(view.quarters[i])) for i in range(8)])
  other = _corrupt(key, images + jnp.asarray(back, jnp.float32), spec, tasks_lib.TRANSFORMS)
  outside = ~(hidden | chroma)
  np.testing.assert_allclose(np.asarray(other.inputs)[outside], np.asarray(view.inputs)[outside],
                             atol=1e-5)
  assert not np.allclose(np.asarray(other.pixels)[hidden], np.asarray(view.pixels)[hidden])


def test_no_task_reads_a_masked_patch_and_targets_come_from_the_uncorrupted_view():
  """Changing the pixels under the inpainting cells changes no head's
  output (the mask token replaced them) but the inpainting target; every
  target is read from view.pixels, which no corruption touches."""
  m = _method()
  batch = _batch()
  params = _init(m, batch)
  images = batch['image'][:, 0]
  view = _corrupt(jax.random.key(2), images, m.spec, tasks_lib.TRANSFORMS)
  cells = m._cells(view, m.tasks)
  run = unoptimised_jit(lambda v: m.net.apply({'params': params}, m._inputs(v), cells,
                                              masked=v.masked, unpositioned=v.unpositioned,
                                              train=False)[0])
  noisy = np.asarray(view.inputs).copy()
  mask = np.asarray(view.masked)
  noisy[mask] = np.random.default_rng(0).uniform(size=noisy[mask].shape)
  changed = view._replace(inputs=jnp.asarray(noisy))
  for task, out in run(view).items():
    np.testing.assert_allclose(run(changed)[task], out, atol=1e-6, err_msg=task)
  # Targets: the colour of a grayscale patch is its true colour, not gray.
  targets = unoptimised_jit(m._colour_targets)
  target, gray = targets(view), targets(view._replace(pixels=view.inputs))
  assert not np.allclose(target, gray)


def test_withheld_positions_hide_the_pairs_cells():
  """'withheld': the position embeddings of a pair's cells reach no token
  (perturbing them changes nothing); 'literal': they do."""
  from ssl_jax.methods.multitask_vit.model import MultiTaskViT
  for shortcut, invariant in (('withheld', True), ('literal', False)):
    m = _method(**{'multitask_vit.relative_position.shortcut': shortcut})
    batch = _batch()
    params = _init(m, batch)
    view = _corrupt(jax.random.key(5), batch['image'][:1, 0], m.spec, ('relative_position',))
    anchor = int(view.pairs.anchor[0, 0])
    moved = jax.tree.map(lambda x: x, params)
    bump = jax.random.normal(jax.random.key(9), (params['vit']['pos_embed'].shape[-1],))
    # (a random direction: a constant one would vanish in every LayerNorm)
    moved['vit']['pos_embed'] = params['vit']['pos_embed'].at[anchor].add(bump)
    encode = unoptimised_jit(lambda p: m.net.apply({'params': p}, m._inputs(view), masked=None,
                                                   unpositioned=view.unpositioned, train=False,
                                                   method=MultiTaskViT.encode)[0])
    tokens = [encode(p) for p in (params, moved)]
    assert np.allclose(tokens[0], tokens[1], atol=1e-6) == invariant, shortcut


# -- colour, contrastive loss, weighting -------------------------------------------


def test_lab_round_trip_and_reference_colours():
  from ssl_jax.nn import colour
  ref = {(1, 1, 1): (100, 0, 0), (1, 0, 0): (53.241, 80.092, 67.203),
         (0, 1, 0): (87.735, -86.183, 83.179), (0, 0, 1): (32.297, 79.188, -107.860),
         (0.5, 0.5, 0.5): (53.389, 0, 0)}
  lab = colour.rgb_to_lab(jnp.asarray(list(ref), jnp.float32))
  np.testing.assert_allclose(lab, np.asarray(list(ref.values())), atol=2e-3)
  x = np.random.default_rng(0).uniform(size=(4096, 3)).astype(np.float32)
  np.testing.assert_allclose(colour.lab_to_rgb(colour.rgb_to_lab(x)), x, atol=2e-5)
  bins = colour.ab_bins(10.0)
  assert 200 < len(bins) < 330 and (bins % 10 == 0).all()
  assert any((bins == 0).all(-1))  # the greys' cell
  soft = colour.soft_encode(jnp.array([[21.0, -39.0]]), jnp.asarray(bins))
  assert np.isclose(float(soft.sum()), 1.0) and int((soft > 0).sum()) == 5
  np.testing.assert_array_equal(bins[int(jnp.argmax(soft))], [20, -40])  # the nearest bin


def test_inpainting_and_mean_colour_targets_on_hand_made_patches():
  patch = np.zeros((1, 1, 2, 2, 3), np.float32)
  patch[0, 0, :, :, 0] = [[0.0, 1.0], [1.0, 0.0]]  # red channel only
  flat = patch.reshape(-1)  # mean 1/6, variance 5/36
  want = (flat - flat.mean()) / np.sqrt(flat.var() + 1e-6)
  np.testing.assert_allclose(tasks_lib.normalised_pixels(jnp.asarray(patch))[0, 0], want,
                             rtol=1e-5)
  # The mean colour: the mean of the pixels' ab / 100, not the ab of the mean colour.
  from ssl_jax.nn import colour
  red_grey = np.zeros((1, 1, 2, 2, 3), np.float32)
  red_grey[0, 0, 0] = [1, 0, 0]
  red_grey[0, 0, 1] = [0.5, 0.5, 0.5]
  got = tasks_lib.colour_targets(jnp.asarray(red_grey), 'mean', 1, None)
  np.testing.assert_allclose(got[0, 0], [80.092 / 200, 67.203 / 200], atol=1e-4)
  # 'pixels' at one cell per patch: the soft encoding of the pooled ab.
  bins = jnp.asarray(colour.ab_bins(10.0))
  soft = tasks_lib.colour_targets(jnp.asarray(red_grey), 'pixels', 1, bins)
  assert soft.shape == (1, 1, 1, len(bins))
  np.testing.assert_array_equal(np.asarray(bins)[int(jnp.argmax(soft))], [40, 30])


def _nt_xent_numpy(z, views, t, weights):
  u = z / np.linalg.norm(z, axis=1, keepdims=True)
  s = u @ u.T / t
  total, count, hits = 0.0, 0.0, 0.0
  n = len(z)
  for i in range(n):
    if not weights[i]:
      continue
    others = [k for k in range(n) if k != i and weights[k]]
    positives = [k for k in others if k // views == i // views]
    logz = np.log(np.sum(np.exp(s[i, others])))
    total += np.mean([logz - s[i, k] for k in positives])
    hits += others[int(np.argmax(s[i, others]))] in positives
    count += 1
  return total / count, hits / count


def test_nt_xent_matches_numpy_on_one_and_eight_devices():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from ssl_jax.nn.contrastive import nt_xent
  rng = np.random.default_rng(0)
  z = rng.normal(size=(16, 5)).astype(np.float32)
  weights = np.ones(16, np.float32)
  weights[-2:] = 0  # the last image is padding
  want, top1 = _nt_xent_numpy(z, 2, 0.5, weights)
  f = jax.jit(lambda z, w: nt_xent(z, 2, 0.5, w))
  got, parts = f(jnp.asarray(z), jnp.asarray(weights))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  np.testing.assert_allclose(float(parts['top1']), top1)
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))
  shard = lambda x: jax.device_put(jnp.asarray(x), NamedSharding(mesh, P('data')))
  sharded, _ = f(shard(z), shard(weights))
  np.testing.assert_allclose(float(sharded), want, rtol=1e-5)


def test_uncertainty_weighting_is_sits():
  m = _method()
  losses = {t: jnp.float32(i + 1.0) for i, t in enumerate(m.tasks)}
  s = jnp.linspace(-1.0, 1.0, len(m.tasks))
  total, metrics = m._combine(losses, s)
  want = sum((0.5 if t == 'inpainting' else 1.0) * np.exp(-float(s[i])) * (i + 1.0)
             + 0.5 * float(s[i]) for i, t in enumerate(m.tasks))
  np.testing.assert_allclose(float(total), want, rtol=1e-6)
  assert set(metrics) == {f'{t}/weight' for t in m.tasks}
  fixed = _method(**{'multitask_vit.weighting': 'fixed', 'multitask_vit.jigsaw.weight': 0.5})
  total, _ = fixed._combine(losses, None)
  want = sum((0.5 if t == 'jigsaw' else 1.0) * (i + 1.0) for i, t in enumerate(m.tasks))
  np.testing.assert_allclose(float(total), want, rtol=1e-6)


# -- the network ------------------------------------------------------------------


def test_every_head_has_its_shape_and_the_representations_theirs():
  m = _method()
  batch = _batch(b=3)
  params = _init(m, batch)
  images = batch['image'][:, 0]
  view = _corrupt(jax.random.key(1), images, m.spec, tasks_lib.TRANSFORMS)
  out, tokens = unoptimised_jit(lambda v: m.net.apply(
      {'params': params}, m._inputs(v), m._cells(v, m.tasks), masked=v.masked,
      unpositioned=v.unpositioned, train=False))(view)
  bins = len(m.bins)
  assert {k: v.shape for k, v in out.items()} == {
      'contrastive': (3, 128), 'rotation': (3, 4), 'colorization': (3, 6, bins),
      'inpainting': (3, 6, 48), 'relative_position': (3, 4, 8), 'jigsaw': (3, 6, 64),
      'log_vars': (6,)}
  assert tokens.shape == (3, 3 + 64, 16)
  backbone = _init(m, batch, decoder=False)
  rep = unoptimised_jit(lambda p, x: m.represent(p, {'image': x}))(backbone, images)
  assert set(rep) == set(m.representations()) and all(v.shape == (3, 16) for v in rep.values())
  # The backbone alone: no heads, no weighting, no mask token.
  assert set(backbone) == {'vit'} and 'mask_token' not in backbone['vit']


def test_pictures_show_every_tasks_panel():
  """view | what the model reads | inpainted | coloured | pairs | jigsaw
  put back | turned back: seven panels per image; a task left out drops
  its panel."""
  m = _method()
  batch = _batch(b=2)
  params = _init(m, batch)
  draw = lambda m, p: unoptimised_jit(  # noqa: E731
      lambda p, x: m.pictures(p, x, jax.random.key(3)))(p, batch['image'][:, 0])
  pictures = np.asarray(draw(m, params))
  assert pictures.dtype == np.uint8 and pictures.shape[0] == 2
  width = pictures.shape[2]
  fewer = _method(**{'multitask_vit.tasks': 'rotation,colorization'})
  smaller = np.asarray(draw(fewer, _init(fewer, _batch(b=2, views=1))))
  assert smaller.shape[1] == pictures.shape[1] and smaller.shape[2] < 0.7 * width
  # The view and what the model reads differ (grayscale, masked, moved patches).
  panel = (width + 2) // 7 - 2
  assert not np.array_equal(pictures[:, :, :panel], pictures[:, :, panel + 2:2 * panel + 2])


def _flops(m, batch) -> float:
  """XLA's cost analysis of the loss and its gradient (forward and backward
  FLOPs) as traced, before XLA's optimisations: what the step asks for, not
  what dead-code elimination saves. Shapes only: nothing is initialised."""
  key = jax.random.key(0)
  params = jax.eval_shape(lambda k: m.init(k, batch), key)
  state = jax.eval_shape(lambda k, p: m.init_state(k, batch, p), key, params)
  lowered = jax.jit(jax.value_and_grad(
      lambda p, s, b: m.loss(p, b, jax.random.key(1), state=s)[0])).lower(params, state, batch)
  return lowered.cost_analysis()['flops']


@pytest.mark.slow  # four traces of the whole loss and gradient: the slow tier
def test_a_disabled_task_adds_no_flops():
  """Leaving jigsaw out removes its head and its compute from the traced
  program; a zero weight keeps both (what 'disabled' must not mean)."""
  batch = _batch()
  all_tasks = 'contrastive,rotation,colorization,inpainting,relative_position,jigsaw'
  fixed = {'multitask_vit.weighting': 'fixed'}
  full = _flops(_method(**fixed), batch)
  zero = _flops(_method(**fixed, **{'multitask_vit.jigsaw.weight': 0.0}), batch)
  off = _method(**fixed, **{'multitask_vit.tasks': all_tasks.replace(',jigsaw', '')})
  assert 'jigsaw_head' not in jax.eval_shape(lambda k: off.init(k, batch), jax.random.key(0))
  without = _flops(off, batch)
  assert without < full and abs(zero - full) / full < 0.02, (without, zero, full)
  # Rotation alone: one view (no contrastive pairs), no patch task drawn.
  alone = _method(**fixed, **{'multitask_vit.tasks': 'rotation'})
  assert len(alone.views(_config(**{'multitask_vit.tasks': 'rotation'}))) == 1
  assert _flops(alone, _batch(views=1)) < 0.5 * without


def test_gradient_diagnostics_are_each_tasks_own_gradient():
  m = _method(**{'multitask_vit.diagnostics_every': 2,
                 'multitask_vit.tasks': 'rotation,inpainting,jigsaw'})
  batch = _batch()
  params = _init(m, batch)
  state = m.init_state(jax.random.key(0), batch, params)
  step = unoptimised_jit(lambda p, s, r: m.loss(p, batch, r, state=s))
  _, aux = step(params, state, jax.random.key(7))
  images, views = batch['image'].reshape(8, 32, 32, 3), 2
  weights = jnp.ones(8)
  # Each task's gradient on the backbone, in one compiled function.
  grads = unoptimised_jit(lambda vit: [jax.grad(lambda vit, t=t: m._losses(
      dict(params, vit=vit), images, views, weights, jax.random.key(7), True)[0][t])(vit)
      for t in m.tasks])(params['vit'])
  flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in grads]
  for i, t in enumerate(m.tasks):
    np.testing.assert_allclose(float(aux.metrics[f'{t}/backbone_grad_norm']),
                               np.linalg.norm(flat[i]), rtol=1e-4)
  cos = flat[0] @ flat[2] / np.linalg.norm(flat[0]) / np.linalg.norm(flat[2])
  np.testing.assert_allclose(float(aux.metrics['grad_cosine/rotation-jigsaw']), cos,
                             rtol=1e-3, atol=1e-5)
  # The next step carries the values; the one after computes anew.
  _, aux2 = step(params, aux.state, jax.random.key(8))
  assert int(aux2.state['step']) == 2
  np.testing.assert_array_equal(aux2.state['grad_norm'], aux.state['grad_norm'])
  _, aux3 = step(params, aux2.state, jax.random.key(9))
  assert not np.array_equal(aux3.state['grad_norm'], aux2.state['grad_norm'])
  # The training gradient is the same with the diagnostics on and off.
  off = _method(**{'multitask_vit.diagnostics_every': 0,
                   'multitask_vit.tasks': 'rotation,inpainting,jigsaw'})
  grad = lambda m, s: unoptimised_jit(jax.grad(lambda p: m.loss(  # noqa: E731
      p, batch, jax.random.key(7), state=s)[0]))(params)
  for a, b in zip(jax.tree.leaves(grad(m, state)), jax.tree.leaves(grad(off, {}))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_separate_passes_give_each_task_its_own_view():
  """passes='separate': one forward pass per task, each view carrying only
  that task's transformation (the loss is finite and every task reports)."""
  m = _method(**{'multitask_vit.passes': 'separate'})
  assert [p for p in m._passes()] == [((), ('contrastive',)), (('rotation',), ('rotation',)),
                                      (('colorization',), ('colorization',)),
                                      (('inpainting',), ('inpainting',)),
                                      (('relative_position',), ('relative_position',)),
                                      (('jigsaw',), ('jigsaw',))]
  batch = _batch()
  params = _init(m, batch)
  loss, aux = unoptimised_jit(lambda p: m.loss(p, batch, jax.random.key(1), state={}))(params)
  assert np.isfinite(float(loss)) and all(f'{t}/loss' in aux.metrics for t in m.tasks)


# -- configs ----------------------------------------------------------------------


@pytest.mark.parametrize('key, value, message', [
    ('multitask_vit.tasks', 'contrastive,sudoku', 'sudoku unknown'),
    ('multitask_vit.tasks', 'rotation,rotation', 'multitask_vit.tasks'),
    ('multitask_vit.jigsaw.patches', 60, 'only 56 of the 64 are free'),
    ('multitask_vit.jigsaw.patches', 1, 'jigsaw.patches'),
    ('multitask_vit.colorization.resolution', 3, 'colorization.resolution'),
    ('multitask_vit.relative_position.shortcut', 'none', 'shortcut'),
    ('multitask_vit.relative_position.augment.jitter_px', 1, 'augment'),
    ('multitask_vit.patch_size', 5, 'patch_size'),
    ('multitask_vit.passes', 'two', 'passes'),
    ('online_probe.representation', 'layer_1', 'online_probe'),
])
def test_bad_keys_are_refused_by_name(key, value, message):
  from ssl_jax.core import validation
  c = _override(_config(), {key: value})
  with pytest.raises(ConfigError, match=message):
    validation.validate(c, 1)


def test_every_task_and_weighting_is_an_override():
  from configs import multitask_vit
  from ssl_jax.core import validation
  tasks = tasks_lib.TASKS
  for variant in ('tiny', 'cifar10', ''):
    for subset in [t for t in tasks] + [','.join(t for t in tasks if t != d) for d in tasks]:
      for extra in ({}, {'multitask_vit.weighting': 'fixed'},
                    {'multitask_vit.passes': 'separate'},
                    {'multitask_vit.relative_position.shortcut': 'withheld'}):
        c = _override(multitask_vit.get_config(variant),
                      {'multitask_vit.tasks': subset, **extra})
        validation.validate(c, 8)


# -- full size and end to end ------------------------------------------------------


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.slow
@pytest.mark.parametrize('variant, blocks, width', [('', 85.0e6, 768), ('cifar10', 21.3e6, 384)])
def test_paper_settings_build_at_full_size_and_step_on_synthetic_data(variant, blocks, width):
  """ImageNet ViT-B/16 and CIFAR-10 ViT-S/4 traced at full size with
  jax.eval_shape (diagnostics included), then one real train step on
  synthetic images of their shape at a small batch, on one device."""
  from configs import multitask_vit
  from ssl_jax.core import assembly
  from ssl_jax.core import step as step_lib
  config = multitask_vit.get_config(variant)
  trainer = assembly.Trainer(config)
  abstract = trainer.abstract_state()
  params = abstract.params['model']
  count = _param_count(params['vit']['encoder'])
  assert abs(count - blocks) / blocks < 0.01, count  # 12 blocks: 12 x 12 x width^2
  assert params['vit']['pos_embed'].shape == ((config.data.image_size
                                               // config.multitask_vit.patch_size) ** 2, width)
  step = step_lib.make_train_step(trainer.task, trainer.tx, trainer.lr_schedule, 0)
  batch = assembly.abstract_batch(config)
  size = config.data.image_size
  assert batch['image'].shape == (config.batch_size, 2, size, size, 3)
  new_state, metrics = jax.eval_shape(step, abstract, batch)
  assert metrics['loss'].shape == () and 'grad_cosine/contrastive-rotation' in metrics
  config.batch_size = 2
  config.multitask_vit.diagnostics_every = 0  # 6 extra backward passes: traced above
  small = assembly.Trainer(config, devices=jax.devices()[:1])
  state = small.init_state(small.abstract_state())
  images = np.random.default_rng(0).uniform(size=(2, 2, size, size, 3)).astype(np.float32)
  real = {'image': jnp.asarray(images), 'label': jnp.zeros((2,), jnp.int32),
          'valid': jnp.ones((2,), bool)}
  compiled, _ = small.compile_step(small.abstract_state(), assembly.abstract_batch(config))
  _, metrics = compiled(state, real)
  assert np.isfinite(float(metrics['loss'])), metrics


@pytest.mark.slow  # not e2e: the README tier runs the tiny config in test_golden
def test_multitask_vit_resumes_exactly_and_probes(data_dir, tmp_path):
  """A run stopped at a checkpoint and resumed ends with the very
  parameters and diagnostics state of an uninterrupted one; a linear probe
  of the checkpoint trains. (Other device counts: the golden losses are
  recorded only where 1 and 8 devices agree, and tests/test_multihost.py
  holds 2 processes of 4 devices to them.)"""
  from configs import multitask_vit
  from ssl_jax.core import train
  config = small_method_config('multitask_vit', 'tiny', data_dir, batch_size=8,
                               **{'multitask_vit.model.depth': 2,
                                  'multitask_vit.diagnostics_every': 3})
  config.data.name = 'ssl_jax_shapes/upright_small'
  whole = train.run(config, str(tmp_path / 'whole'))
  parts = str(tmp_path / 'parts')
  assert train.run(config, parts, stop_after=2).last_step == 2
  second = train.run(config, parts)
  for a, b in zip(jax.tree.leaves((second.state.params, second.state.method_state)),
                  jax.tree.leaves((whole.state.params, whole.state.method_state)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  probe = multitask_vit.linear_probe_config('tiny')
  probe.backbone.multitask_vit = config.multitask_vit
  probe.data.update(dict(name='ssl_jax_shapes/upright_small', data_dir=data_dir,
                         held_out_examples=48))
  probe.init.workdir = str(tmp_path / 'whole')
  probe.update(dict(total_steps=2, batch_size=16, log_every=1))
  probe.classifier.whiten_examples = 64
  probe.optimizer.warmup_steps = 0
  probe.checkpoint.every = 2
  probe.eval.update(dict(split='test[:48]', batch_size=48))
  out = train.run(probe, str(tmp_path / 'probe'))
  assert 0 <= out.evaluation['eval/top1'] <= 1
