r"""One comparison of every method on the same data, budget and evaluations.

Every method's `tiny` network (configs/METHOD.py:tiny: PatchFormer,
RandSAC, iGPT AR and BERT, Selfie, DV2, the multi-task ViT, MAE) is
pretrained on the built-in dataset's upright configuration
(ssl_jax_shapes/upright: the multi-task ViT's rotation needs an upright;
the other methods ignore orientation) for the same number of images seen
(`--images`, 64,000 by default: 1000 steps of 64 images, the tiny budget of
most methods; DV2's 16 images per step run 4000 steps, PatchFormer's and
iGPT's 32 run 2000; warmup scaled alike). Each method keeps its own
resolution, network, optimizer and augmentation (its tiny config), so a row
measures the method as its config defines it. Everything is deterministic:
the table's accuracies reproduce (its times are this machine's).

Equal tuning. Each method's pretraining learning rate is chosen from the
same grid (`--lrs`, 3e-4, 1e-3 and 3e-3, which holds every tiny config's
own) at seed 0, by the held-out top-1 of its linear probe (the chosen
representation's, on 1000 training images held out; the test split is not
read for any choice). The linear probe is a logistic regression solved to
convergence (L-BFGS, ssl_jax.core.feature_probe), so it has no learning
rate to tune: what every method gets swept alike is its regularisation
(the same l2 grid) and the representation it is read from, both chosen on
the held-out images. A grid that stops short of a method's best is
extended for it, by one rule for all: while the best rate is the grid's
largest (smallest), the next one past it on the 1-3-10 sequence (3e-3 ->
1e-2 -> 3e-2) is pretrained and probed too, at most EXTENSIONS (2) each
way; a rate still at the edge after that is marked in the table. A rate
whose pretraining diverges (a non-finite loss) is recorded as diverged and
left out of the choice, not retried (and ends the extension). Only the
chosen rate's network gets the other evaluations and the plot's curve
(its pretraining read back, or run again to the same weights); seeds
1 .. --seeds-1 pretrain at it.

Per method and seed, on its pretrained network (reported: test top-1 on
all 4000 test images, read once after every choice):
  kNN          cosine kNN (the monitors' k and temperature) on the training
               features of the probe's chosen representation
  probe 100%   the layer sweep (--layer_sweep): every representation, its
               l2 and the best one chosen on the held-out images, all the
               19,000 other training labels
  probe 10%    the same on the class-balanced 10% of those labels (about
               1900); its l2 and representation chosen on the same 1000
               held-out labelled images, which it does not train on
               (every choice here is made on held-out data): counting
               them, its result uses about 2900 labels
  fine-tune 10%  configs/finetune.py:METHOD_tiny on the 10% labels, each
               method's own recipe (batch, lr, schedule, head) run for the
               same 32,000 images seen (FINETUNE_IMAGES; the recipes' own
               lengths differ: iGPT's 300 steps of 32, RandSAC's 1000 of
               64); its last step, nothing chosen
  10-shot ridge  closed-form ridge on 10 labels per class of the training
               features, on the probe's chosen representation (mean of the
               monitors' 3 draws)
References, over the same seeds, for every network of the table
(REFERENCE_NETWORKS): PatchFormer's; the ViT of MAE's tiny encoder (4
blocks 64 wide, 4x4 patches at 32x32), which RandSAC's and the multi-task
ViT's tiny networks share (their readouts and recipes differ: the ViT's
reference runs MAE's); iGPT's transformer (AR's causal one, BERT's too,
whose attention is not causal: one network fewer to run); Selfie's and
DV2's patch networks (DV2's has a fourth stack and an exchange layer, and
reads 'double_view'). Each one's random init, as each seed initialises it,
probed the same way and fine-tuned from scratch on 10% of the labels
(configs/finetune.py:METHOD_tiny_scratch: its method's own recipe, from
random weights; Selfie's and DV2's read the raw features there), and its
upper reference: the same network trained from scratch on all the labels,
the recipe's own length. A method's probes and fine-tune are to be read
against its own network's random init: on this dataset Selfie's and DV2's
networks fit the 10% labels from scratch (99.8% and 99.7% held-out
top-1), so a single reference network would credit their pretraining with
what their network does alone. And raw pixels (32x32x3, the probes only).

Beside each row: parameters (pretraining, decoder and heads included),
ms/step and FLOPs per step (the compiled step timed back to back in one
process after the runs, XLA's cost analysis), pretraining minutes (steps
x that ms/step: the same measurement for every method, without its input
pipeline) and TFLOPs. The plot (compare.png) shows each method's
linear-probe test top-1 on its chosen representation against pretraining
minutes, from the seed-0 run's checkpoints (every fifth of the run).

Every run resumes from its own workdir (WORKDIR/METHOD/lrLR/seedS/...) and
a finished one is read back, so an interrupted comparison picks up where it
stopped; each finished unit (an lr's selection point, a seed's
evaluations, a reference seed) goes into the ledger,
benchmarks/results/compare.json by default (benchmarks/ledger.py), so a
rerun on another machine, or of a later commit, measures only what is
missing. Processes sharing the workdir and the ledger (the same command on
several machines with a common filesystem, or two on one) share the work
out: each unit is measured under a lease of its own (WORKDIR/units/KEY),
so none is measured twice; a process that meets a unit another one holds
measures the units that do not depend on it first, then waits for it and
reads it from the ledger (and takes over a unit whose holder died).
An entry measured under another protocol (PROTOCOL: the curve's
points, the fine-tune's images, the label fraction, the ridge's shots, the
test split) is refused before anything runs; the methods' configs are not
compared (the table's foot names every commit that measured it).
--methods picks rows; --quick is a smoke run (the small upright dataset,
pretraining 8x and fine-tunes 4x shorter, one learning rate), not a
measurement.

Units of the full run: 24 pretrainings that choose the lrs (8 methods x 3,
and one or two more for a method whose best is at an edge) and 16 more
seeds; 40 layer sweeps on all the labels, 24 on 10%, 32 one-representation
curve probes, 24 fine-tunes; the references' 3 seeds of each of the 5
networks (random init's two layer sweeps and fine-tune, the upper
reference) and one run of the pixels' probes.
Measured on 2 CPU cores: the 32 of the 72 units that the ledger timed took
17.4 h of process wall time, most of it two processes sharing the cores;
of the other 40, 38 methods' units were measured before the ledger kept
times (all the methods' units were estimated at about 13 hours in one
process) and 2 references by a process paused while it ran. With every
unit in the committed ledger a run measures nothing and takes about 6
minutes (the timing pass). The README's comparison section has the table.

  python benchmarks/compare.py --workdir=/tmp/ssl_jax_compare
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import os
import sys
import time
from typing import Any, Callable

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import ablation  # noqa: E402
from benchmarks import ledger as ledger_lib  # noqa: E402
from benchmarks.ledger import Ledger, LedgerError  # noqa: E402
from configs import finetune, linear_probe  # noqa: E402

DATA = 'ssl_jax_shapes/upright'
QUICK_DATA = 'ssl_jax_shapes/upright_small'
CURVE_POINTS = 5  # checkpoints along the seed-0 run that the plot probes
FINETUNE_IMAGES = 32_000  # images seen by every fine-tune on 10% of the labels
LABEL_FRACTION = 0.1
RIDGE_SHOTS = 10
TEST_SPLIT = 'test'  # all 4000 test images (the tiny configs read 1000)
# What every entry was measured with: a ledger entry of another protocol is
# refused (benchmarks/ledger.py). The methods' configs are not in it (a
# refactor would void hours of entries); the table's foot names the commits.
PROTOCOL = {'curve_points': CURVE_POINTS, 'finetune_images': FINETUNE_IMAGES,
            'label_fraction': LABEL_FRACTION, 'ridge_shots': RIDGE_SHOTS,
            'test_split': TEST_SPLIT}
PIXELS_SIZE = 32
# The evaluations every row and reference reports, in the table's order.
EVALUATIONS = ('knn', 'probe100', 'probe10', 'finetune10', 'ridge10')
# Further lrs tried past an edge of the --lrs grid, each way, while the
# best is at that edge (run_entry).
EXTENSIONS = 2


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  method: str   # configs/METHOD.py
  variant: str  # its pretraining variant
  key: str      # its directory and --methods name


ENTRIES = (
    Entry('PatchFormer', 'patchformer', 'tiny', 'patchformer'),
    Entry('RandSAC', 'randsac', 'tiny', 'randsac'),
    Entry('iGPT AR', 'igpt', 'tiny', 'igpt_ar'),
    Entry('iGPT BERT', 'igpt', 'tiny,bert', 'igpt_bert'),
    Entry('Selfie', 'selfie', 'tiny', 'selfie'),
    Entry('DV2', 'dv2', 'tiny', 'dv2'),
    Entry('multi-task ViT', 'multitask_vit', 'tiny', 'multitask_vit'),
    Entry('MAE', 'mae', 'tiny', 'mae'),
)


@dataclasses.dataclass(frozen=True)
class Reference:
  key: str                  # its ledger and directory name
  name: str                 # the table's
  method: str               # the ENTRIES key whose tiny network and recipes it runs
  rows: tuple[str, ...]     # the ENTRIES keys whose network it is


# The networks of the reference rows, one per distinct tiny network.
REFERENCE_NETWORKS = (
    Reference('patchformer', "PatchFormer's network", 'patchformer', ('patchformer',)),
    Reference('vit', "ViT (MAE's tiny encoder)", 'mae', ('randsac', 'multitask_vit', 'mae')),
    Reference('igpt', "iGPT's transformer (causal, as AR's)", 'igpt_ar',
              ('igpt_ar', 'igpt_bert')),
    Reference('selfie', "Selfie's patch network", 'selfie', ('selfie',)),
    Reference('dv2', "DV2's patch network", 'dv2', ('dv2',)),
)


@dataclasses.dataclass(frozen=True)
class Setting:
  images: int
  quick: bool
  data_dir: str | None

  @property
  def data(self) -> str:
    return QUICK_DATA if self.quick else DATA

  def on_data(self, c, *, probe: bool):
    """The config on this comparison's dataset and evaluation splits."""
    c.data.name = self.data
    if self.data_dir:
      c.data.data_dir = self.data_dir
    if self.quick:  # 2000 / 500 images
      if probe:
        c.data.held_out_examples = 200
      c.eval.update(dict(split='test', train_split='train[:1000]'))
    elif probe:  # what the table reports: every test image
      c.eval.split = TEST_SPLIT
    return c


def pretrain_config(entry: Entry, lr: float, seed: int, s: Setting):
  """configs/METHOD.py:VARIANT for `s.images` images seen at `lr`, with
  CURVE_POINTS checkpoints kept for the plot."""
  from ssl_jax.methods import registry
  c = importlib.import_module(f'configs.{entry.method}').get_config(entry.variant)
  per_step = registry.get(c.objective).images_per_step(c)
  steps = max(CURVE_POINTS, s.images // per_step // (8 if s.quick else 1))
  c.optimizer.warmup_steps = round(c.optimizer.warmup_steps * steps / c.total_steps)
  c.total_steps = steps
  c.optimizer.lr = lr
  c.seed = seed
  every = steps // CURVE_POINTS
  # The curve's checkpoints are kept however many extra ones preemptions save.
  c.checkpoint.update(dict(every=every, keep_period=every))
  c.eval.every = every
  return s.on_data(c, probe=False)


def _backbone(c, pretrain) -> None:
  c.backbone[pretrain.objective] = pretrain[pretrain.objective]
  c.backbone.data.image_size = pretrain.data.image_size


def probe_config(entry: Entry, pretrain, seed: int, init: str | None, s: Setting,
                 fraction: float = 1.0):
  c = linear_probe.get_config(f'{entry.method}_tiny')
  _backbone(c, pretrain)
  if init is None:  # a random network: what its method prepares (iGPT's palette)
    # comes from the pretraining's data, as the _tiny_scratch fine-tunes'.
    c.backbone.data.update({k: pretrain.data.get(k) for k in ('name', 'split', 'data_dir')})
  c.data.image_size = pretrain.data.image_size
  c.seed, c.init.workdir = seed, init
  c.data.label_fraction = fraction
  c.feature_probe.update(dict(train_examples=None, ridge_shots=RIDGE_SHOTS))
  return s.on_data(c, probe=True)


def finetune_config(entry: Entry, pretrain, seed: int, init: str | None, s: Setting,
                    fraction: float, images: int | None = FINETUNE_IMAGES):
  """configs/finetune.py:METHOD_tiny (or _tiny_scratch without `init`),
  its steps set for `images` images seen (its own batch, lr and schedule;
  warmup scaled alike); images=None keeps the recipe's own length."""
  c = finetune.get_config(f'{entry.method}_tiny' if init else f'{entry.method}_tiny_scratch')
  if init:  # from scratch, the recipe's own network (iGPT's: token_init 'palette')
    _backbone(c, pretrain)
  c.data.image_size = pretrain.data.image_size
  c.seed, c.init.workdir, c.data.label_fraction = seed, init, fraction
  if images is not None:
    steps = max(1, images // c.batch_size)
    c.optimizer.warmup_steps = round(c.optimizer.warmup_steps * steps / c.total_steps)
    c.total_steps = steps
    c.checkpoint.every = min(c.checkpoint.every, steps)
  if s.quick:
    ablation.adjusted(c, True, None)
  return s.on_data(c, probe=True)


def sweep(config, workdir: str) -> list[dict]:
  """The layer sweep's rows (run now, or read back: one that another config
  measured there is refused)."""
  from ssl_jax.core import feature_probe
  return feature_probe.rows_of(config, workdir)


def chosen(rows: list[dict]) -> dict:
  return next(r for r in rows if r['chosen'])


def pretrained(entry: Entry, lr: float, seed: int, root: str, s: Setting) -> tuple[Any, str]:
  """(its config, its workdir): `entry` pretrained at `lr` and `seed` (or
  read back); train.NonFiniteLossError when its loss diverges."""
  from ssl_jax.core import train
  config = pretrain_config(entry, lr, seed, s)
  workdir = os.path.join(root, entry.key, f'lr{lr:g}', f'seed{seed}')
  t0 = time.perf_counter()
  train.run_to_end(config, os.path.join(workdir, 'pretrain'))
  logging.info('%s lr %g seed %d: pretrained (%.0f s)', entry.name, lr, seed,
               time.perf_counter() - t0)
  return config, workdir


def probe100(entry: Entry, config, seed: int, init: str | None, workdir: str,
             s: Setting) -> dict[str, Any]:
  """The layer sweep on all the labels (init: the pretraining's workdir;
  None: random init): its held-out top-1 chooses the lr, its chosen
  representation is the kNN's and the ridge's."""
  full = chosen(sweep(probe_config(entry, config, seed, init, s),
                      os.path.join(workdir, 'probe100')))
  return {'probe100': full['top1'], 'val100': full['val_top1'], 'knn': full['knn_top1'],
          'ridge10': full.get('ridge_10shot_top1'), 'representation': full['representation'],
          'l2': full['l2']}


def low_label(entry: Entry, config, seed: int, init: str | None, workdir: str,
              s: Setting) -> dict[str, Any]:
  """The layer sweep and the fine-tune on the class-balanced 10% of the labels."""
  tenth = chosen(sweep(probe_config(entry, config, seed, init, s, LABEL_FRACTION),
                       os.path.join(workdir, 'probe10')))
  tune = finetune_config(entry, config, seed, init, s, LABEL_FRACTION)
  return {'probe10': tenth['top1'], 'representation10': tenth['representation'],
          'l2_10': tenth['l2'],
          'finetune10': fine_tuned(tune, os.path.join(workdir, 'finetune10'))}


def fine_tuned(config, workdir: str) -> float | None:
  """The fine-tune's test top-1 at its last step; None when its loss
  diverged (a result, kept in the ledger: training is deterministic, so a
  rerun would diverge again at the same step, and the run must go on)."""
  from ssl_jax.core import train
  try:
    return train.run_to_end(config, workdir)['eval/top1']
  except train.NonFiniteLossError as e:
    logging.warning('the fine-tune in %s diverged: %s', workdir, _first_line(e))
    return None


def evaluations(entry: Entry, config, seed: int, init: str | None, workdir: str,
                s: Setting) -> dict[str, Any]:
  """Every measurement of the table on one network."""
  return {**probe100(entry, config, seed, init, workdir, s),
          **low_label(entry, config, seed, init, workdir, s)}


def curve(entry: Entry, config, workdir: str, representation: str, final_top1: float,
          s: Setting) -> list[dict]:
  """Test top-1 of the probe of `representation` at each kept checkpoint
  of the seed-0 run (its l2 chosen on the held-out images). The last point
  is `final_top1`: the layer sweep of the final step has just measured that
  very probe (same seed, representation and l2 grid)."""
  out = []
  every = config.checkpoint.every
  for k in range(1, CURVE_POINTS + 1):
    step = min(k * every, config.total_steps)
    if k == CURVE_POINTS or step == config.total_steps:
      out.append({'step': config.total_steps, 'top1': final_top1})
      break
    probe = probe_config(entry, config, 0, os.path.join(workdir, 'pretrain'), s)
    probe.init.step = step
    probe.feature_probe.update(dict(layers=(representation,), ridge_shots=0))
    row = chosen(sweep(probe, os.path.join(workdir, 'curve', f'step{step}')))
    out.append({'step': step, 'top1': row['top1']})
  return out


def _diverged(entry: Entry, lr: float, seed: int, error: Exception) -> dict[str, str]:
  """A pretraining whose loss diverged: a result (kept in the ledger, so a
  rerun does not diverge again at the same step), not a crash of the run."""
  first = _first_line(error)
  logging.warning('%s lr %g seed %d diverged: %s', entry.name, lr, seed, first)
  return {'diverged': first}


def _first_line(error: Exception) -> str:
  return str(error).splitlines()[0] if str(error) else type(error).__name__


def selection_point(entry: Entry, lr: float, root: str, s: Setting,
                    ledger: Ledger) -> dict[str, Any]:
  """Seed 0 pretrained at `lr` and probed on all the labels (probe100):
  its held-out top-1 is what chooses the lr. From the ledger or measured
  into it; {'diverged': why} when the pretraining diverged."""
  from ssl_jax.core import train

  def measure():
    try:
      config, workdir = pretrained(entry, lr, 0, root, s)
    except train.NonFiniteLossError as e:
      return _diverged(entry, lr, 0, e)
    return {**probe100(entry, config, 0, os.path.join(workdir, 'pretrain'), workdir, s),
            'steps': config.total_steps}
  key = f'{entry.key}/lr{lr:g}/select'
  return ledger.measured(key, _spec(entry), measure, hold=_hold(root, key))


def measured_point(entry: Entry, lr: float, seed: int, root: str, s: Setting,
                   ledger: Ledger, selected: dict[str, Any] | None = None) -> dict[str, Any]:
  """A pretraining of `entry` at the chosen lr and every evaluation of it,
  from the ledger or measured into it. Seed 0 passes `selected`, its
  selection point, whose probe it keeps (its pretraining is read back, or
  run again to the same weights on another machine), and adds the plot's
  curve. {'diverged': why} when the pretraining diverged."""
  from ssl_jax.core import train

  def measure():
    try:
      config, workdir = pretrained(entry, lr, seed, root, s)
    except train.NonFiniteLossError as e:
      return _diverged(entry, lr, seed, e)
    init = os.path.join(workdir, 'pretrain')
    point = ({k: v for k, v in selected.items() if k != 'steps'} if selected
             else probe100(entry, config, seed, init, workdir, s))
    point.update(low_label(entry, config, seed, init, workdir, s))
    if seed == 0:
      point['curve'] = curve(entry, config, workdir, point['representation'],
                             point['probe100'], s)
    point['steps'] = config.total_steps
    return point
  key = f'{entry.key}/lr{lr:g}/seed{seed}'
  return ledger.measured(key, _spec(entry), measure, hold=_hold(root, key))


def _hold(root: str, key: str) -> str:
  """The directory whose lease a process holds while it measures the unit
  `key` (ledger.Ledger.measured): processes sharing the workdir and the
  ledger never measure one unit at the same time."""
  return os.path.join(root, 'units', key)


def each(units: list[Callable[[], Any]]) -> list[Any]:
  """[unit() for unit in units], for units that do not depend on one
  another: one that another process is measuring (locking.Busy) does not
  stop this process from measuring the others; once they have all been
  tried, the first such Busy is raised (`share_out` comes back later)."""
  from ssl_jax import locking
  out, busy = [], None
  for unit in units:
    try:
      out.append(unit())
    except locking.Busy as e:
      busy = busy or e
  if busy is not None:
    raise busy
  return out


def share_out(jobs: dict[str, Callable[[], Any]], poll_s: float = 30.0) -> dict[str, Any]:
  """Every job's result ({name: job()}). A job that meets units other
  processes are measuring (locking.Busy: processes sharing the workdir and
  the ledger, such as the same command on several machines) is set aside
  while this process runs the others, then tried again: every `poll_s`
  seconds once only such jobs are left. It then reads those units from the
  ledger once their holders stored them, and takes over any whose holder
  died (its heartbeat stale)."""
  from ssl_jax import locking
  results, said = {}, None
  while True:
    busy = {}
    for name, job in jobs.items():
      if name not in results:
        try:
          results[name] = job()
        except locking.Busy as e:
          busy[name] = e
    if not busy:
      return {name: results[name] for name in jobs}
    held = '; '.join(f'{name}: {e.holder.describe() if e.holder else _first_line(e)}'
                     for name, e in busy.items())
    if held != said:
      logging.info('waiting for units that other processes are measuring (%s); looking '
                   'again every %g s', held, poll_s)
      said = held
    time.sleep(poll_s)


_said: set[str] = set()


def _once(level: int, message: str, *args) -> None:
  """Logs `message % args` the first time only: `share_out` runs a job
  again after it met units measured elsewhere."""
  text = message % args
  if text not in _said:
    _said.add(text)
    logging.log(level, '%s', text)


def _spec(entry: Entry) -> dict[str, Any]:
  return {'method': entry.method, 'variant': entry.variant, 'protocol': PROTOCOL}


def _best(held_out: dict[float, float | None]) -> float | None:
  """The lr of the highest held-out top-1 (ties: the one nearest 1e-3);
  None when every lr diverged."""
  finite = [lr for lr, v in held_out.items() if v is not None]
  if not finite:
    return None
  return max(finite, key=lambda lr: (held_out[lr], -abs(math.log(lr / 1e-3))))


def beyond(lr: float, grid: list[float], up: bool) -> float:
  """The next lr past `lr`, an edge of `grid`, upwards or downwards: on the
  1-3-10 sequence (3e-3 -> 1e-2 -> 3e-2, 3e-4 -> 1e-4 -> 3e-5), or by the
  grid's own geometric step for an lr off that sequence."""
  k = math.floor(math.log10(lr) + 1e-9)
  mantissa = lr / 10**k
  for m, (over, under) in ((1, (3, 0.3)), (3, (10, 1))):
    if math.isclose(mantissa, m, rel_tol=1e-6):
      return float(f'{(over if up else under) * 10**k:.1g}')
  step = (max(grid) / min(grid)) ** (1 / (len(grid) - 1))
  return float(f'{lr * step if up else lr / step:.3g}')


def run_entry(entry: Entry, root: str, s: Setting, lrs: tuple[float, ...],
              seeds: int, ledger: Ledger) -> dict[str, Any]:
  """Pretrains `entry` at every lr (seed 0) and probes each on all the
  labels, chooses the lr by the probes' held-out top-1, then measures
  everything else at that lr only (seed 0's 10% evaluations and curve, the
  other seeds). While the chosen lr is the grid's largest (smallest), the
  next one past it (`beyond`) is tried too, up to EXTENSIONS each way: the
  same rule for every method, so that none is held to a grid that stops
  short of its best. 'lr' is None when every lr diverged."""
  grid = sorted(lrs)
  selection = dict(zip(grid, each([
      functools.partial(selection_point, entry, lr, root, s, ledger) for lr in grid])))
  while len(lrs) > 1 and (best := _best({lr: p.get('val100') for lr, p in selection.items()})):
    up = best == max(grid)
    past = sum(lr > max(lrs) for lr in grid) if up else sum(lr < min(lrs) for lr in grid)
    if not (up or best == min(grid)) or past >= EXTENSIONS:
      break
    lr = beyond(best, grid, up)
    _once(logging.INFO, '%s: lr %g is the best of %s, the grid\'s %s: trying %g', entry.name,
          best, grid, 'largest' if up else 'smallest', lr)
    grid = sorted(grid + [lr])
    selection[lr] = selection_point(entry, lr, root, s, ledger)
  held_out = {lr: selection[lr].get('val100') for lr in grid}
  keys = [f'{entry.key}/lr{lr:g}/select' for lr in grid]
  by_lr = {f'{lr:g}': held_out[lr] for lr in grid}
  best = _best(held_out)
  if best is None:
    _once(logging.WARNING, '%s: every lr diverged (%s)', entry.name, ', '.join(map(str, grid)))
    return {'lr': None, 'held_out_by_lr': by_lr, 'seeds': [], 'curve': [], 'keys': keys}
  _once(logging.INFO, '%s: lr %g chosen (held-out top-1 by lr: %s)', entry.name, best,
        held_out)
  per_seed = each([functools.partial(measured_point, entry, best, seed, root, s, ledger,
                                     selected=selection[best] if seed == 0 else None)
                   for seed in range(seeds)])
  return {'lr': best, 'held_out_by_lr': by_lr, 'seeds': per_seed,
          # A seed-0 run that diverged (run again on another machine) has none.
          'curve': per_seed[0].get('curve', []), 'steps': selection[best]['steps'],
          'keys': keys + [f'{entry.key}/lr{best:g}/seed{seed}' for seed in range(seeds)]}


def _reference_spec(key: str) -> dict[str, Any]:
  """What a reference unit was measured with: its network's method and
  variant, or the pixels' size."""
  if key == 'pixels':
    return {'pixels': PIXELS_SIZE, 'protocol': PROTOCOL}
  entry = _entry(next(r for r in REFERENCE_NETWORKS if r.key == key).method)
  return {'network': entry.method, 'variant': entry.variant, 'protocol': PROTOCOL}


def _reference_specs() -> dict[str, dict[str, Any]]:
  return {f'references/{k}/': _reference_spec(k)
          for k in [r.key for r in REFERENCE_NETWORKS] + ['pixels']}


def _entry(key: str) -> Entry:
  return next(e for e in ENTRIES if e.key == key)


def run_references(root: str, s: Setting, seeds: int, ledger: Ledger) -> dict[str, Any]:
  """Per REFERENCE_NETWORKS network and seed, its random init (probed, and
  fine-tuned from scratch on 10% of the labels) and its training from
  scratch on all the labels; raw pixels' probes per seed. Each unit
  (references/NETWORK/seedS, references/pixels/seedS) from the ledger or
  measured into it."""

  def network(method: str, seed: int, workdir: str) -> dict[str, Any]:
    entry = _entry(method)
    config = pretrain_config(entry, 1e-3, seed, s)  # its network; nothing pretrains
    random = evaluations(entry, config, seed, None, os.path.join(workdir, 'random'), s)
    # The upper reference keeps its recipe's own length.
    tune = finetune_config(entry, config, seed, None, s, 1.0, images=None)
    return {'random': random,
            'supervised': fine_tuned(tune, os.path.join(workdir, 'supervised'))}

  def pixels(seed: int, workdir: str) -> dict[str, Any]:
    rows = []
    for fraction, name in ((1.0, 'probe100'), (LABEL_FRACTION, 'probe10')):
      c = linear_probe.get_config('pixels_tiny')
      c.data.image_size = PIXELS_SIZE
      c.seed = seed
      c.data.label_fraction = fraction
      c.feature_probe.update(dict(train_examples=None, ridge_shots=RIDGE_SHOTS))
      rows.append(chosen(sweep(s.on_data(c, probe=True), os.path.join(workdir, name))))
    return {'probe100': rows[0]['top1'], 'knn': rows[0]['knn_top1'],
            'ridge10': rows[0].get('ridge_10shot_top1'), 'probe10': rows[1]['top1'],
            'representation': 'pixels', 'representation10': 'pixels'}

  def unit(key: str, seed: int, measure) -> dict[str, Any]:
    workdir = os.path.join(root, 'references', key, f'seed{seed}')
    name = f'references/{key}/seed{seed}'
    return ledger.measured(name, _reference_spec(key), lambda: measure(seed, workdir),
                           hold=_hold(root, name))

  # Raw pixels draw nothing from a seed (fixed features, a probe solved to
  # convergence, the same subsets): one run, not three equal ones.
  *by_network, pixel_run = each(
      [functools.partial(unit, ref.key, seed, functools.partial(network, ref.method))
       for ref in REFERENCE_NETWORKS for seed in range(seeds)]
      + [functools.partial(unit, 'pixels', 0, pixels)])
  out = {'networks': {}}
  for i, ref in enumerate(REFERENCE_NETWORKS):
    got = by_network[i * seeds:(i + 1) * seeds]
    out['networks'][ref.key] = {
        'name': ref.name, 'method': _entry(ref.method).method,
        'rows': [_entry(k).name for k in ref.rows],
        'random': [g['random'] for g in got], 'supervised': [g['supervised'] for g in got]}
  out['pixels'] = [pixel_run]
  out['keys'] = [f'references/{k}/seed{seed}' for k in out['networks']
                 for seed in range(seeds)] + ['references/pixels/seed0']
  out['differences'] = recipe_differences(s)
  return out


# Keys of a fine-tune config that are not its recipe: the starting weights
# and network (set from the pretraining), bookkeeping, the --sweep length.
_NOT_RECIPE = ('init.', 'backbone.', 'checkpoint.', 'log_every', 'sweep.', 'seed')


def recipe_differences(s: Setting) -> dict[str, dict[str, dict[str, list]]]:
  """{network: {row: {key: [the row's fine-tune, from scratch]}}}: where
  each row's fine-tune from its pretrained weights (METHOD_tiny) and its
  network's from random weights (REF_tiny_scratch) differ, beyond the
  weights they start from."""
  from ssl_jax.config import checks

  def recipe(entry: Entry, init: str | None) -> dict[str, Any]:
    c = finetune_config(entry, pretrain_config(entry, 1e-3, 0, s), 0, init, s, LABEL_FRACTION)
    flat = checks.flatten(checks.with_added_keys(c.to_dict()))
    return {k: v for k, v in flat.items() if not k.startswith(_NOT_RECIPE)}

  out = {}
  for ref in REFERENCE_NETWORKS:
    scratch = recipe(_entry(ref.method), None)
    out[ref.key] = {}
    for key in ref.rows:
      tuned = recipe(_entry(key), '/pretrained')
      out[ref.key][_entry(key).name] = {
          k: [tuned.get(k), scratch.get(k)] for k in sorted(set(tuned) | set(scratch))
          if tuned.get(k) != scratch.get(k)}
  return out


def cost(entry: Entry, lr: float, s: Setting, timing_steps: int) -> dict[str, float]:
  """Parameters, seconds and FLOPs per pretraining step (one process)."""
  import jax
  import numpy as np
  from benchmarks.patchformer_step import time_compiled_step
  from ssl_jax.core import assembly
  config = pretrain_config(entry, lr, 0, s)
  # What the pretraining prepared first (iGPT's palette), were it run on
  # another machine: building the method reads it.
  assembly.prepare_method(config)
  dt, flops, _ = time_compiled_step(config, timing_steps)
  abstract = assembly.assemble(config, data=False).trainer.abstract_state()
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  # None when XLA gives no count (the table shows '-'; JSON has no NaN).
  return {'params': params, 'seconds_per_step': dt, 'flops_per_step': flops or None}


# -- the table and the plot ------------------------------------------------------------


def _spread(values: list[float | None]) -> str:
  from ssl_jax.core import seeds as seeds_lib
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  return seeds_lib.format_spread(seeds_lib.spread(values), percent=True)


def table(results: dict[str, Any]) -> str:
  cols = ['kNN', 'probe 100%', 'probe 10%', 'fine-tune 10%', '10-shot ridge']
  keys = EVALUATIONS
  head = (['method', 'lr (chosen)', 'parameters', 'ms/step', 'pretraining min',
           'pretraining TFLOPs'] + [f'{c} top-1 %' for c in cols]
          + ['probe 100%: representation l2=... (x seeds)', 'probe 10%: representation l2=...'])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  sweeps = []
  for entry in ENTRIES:
    r = results.get(entry.key)
    if r is None:
      continue
    sweeps.append(f'{entry.name} ' + ', '.join(
        f'{lr} {"diverged" if v is None else f"{100 * v:.1f}"}'
        for lr, v in r['held_out_by_lr'].items()))
    if r['lr'] is None:
      lines.append('| ' + ' | '.join([entry.name, 'every lr diverged']
                                     + ['-'] * (len(head) - 2)) + ' |')
      continue
    c = r['cost']
    minutes = r['steps'] * c['seconds_per_step'] / 60
    tflops = ('-' if c['flops_per_step'] is None
              else f'{r["steps"] * c["flops_per_step"] / 1e12:.1f}')
    reps, reps10 = {}, {}
    diverged = 0
    for s in r['seeds']:
      if 'diverged' in s:
        diverged += 1
        continue
      for got, rep, l2 in ((reps, 'representation', 'l2'),
                           (reps10, 'representation10', 'l2_10')):
        if rep in s:
          chosen_as = f'{s[rep]} l2={s[l2]:g}'
          got[chosen_as] = got.get(chosen_as, 0) + 1
    notes = [edge] if (edge := _grid_edge(r['lr'], r['held_out_by_lr'])) else []
    if diverged:
      notes.append(f'{diverged} of {len(r["seeds"])} seeds diverged')
    lr = f'{r["lr"]:g}' + (f' ({"; ".join(notes)})' if notes else '')
    lines.append('| ' + ' | '.join(
        [entry.name, lr, f'{c["params"] / 1e6:.2f}M',
         f'{1e3 * c["seconds_per_step"]:.0f}', f'{minutes:.1f}', tflops]
        + [_spread([s.get(k) for s in r['seeds']]) for k in keys]
        + ['; '.join(f'{k} x{n}' for k, n in sorted(got.items()))
           for got in (reps, reps10)]) + ' |')
  refs = results.get('references')
  if refs:
    rows_of = [(f'random init: {n["name"]} (for {", ".join(n["rows"])})', n['random'])
               for n in refs['networks'].values()]
    rows_of.append((f'raw pixels ({PIXELS_SIZE}x{PIXELS_SIZE}x3; one run, nothing in it '
                    'is drawn from a seed)', refs['pixels']))
    for name, rows in rows_of:
      lines.append('| ' + ' | '.join(
          [name, '-', '-', '-', '-', '-'] + [_spread([s.get(k) for s in rows]) for k in keys]
          + [', '.join(sorted({s[k] for s in rows}))
             for k in ('representation', 'representation10')]) + ' |')
  text = '\n'.join(lines)
  if sweeps:
    text += ('\n\nHeld-out top-1 % of the seed-0 probe by pretraining lr (what chose it): '
             + '; '.join(sweeps) + '. The --lrs grid is extended past its edge for a '
             'method whose best is there (at most two rates each way); an lr marked '
             '"top/bottom of the grid" is still at the edge after that.')
  if refs:
    text += ('\n\nUpper references, each network trained from scratch on all the labels '
             'but the held-out ones (configs/finetune.py:METHOD_tiny_scratch, its own '
             'length), test top-1: ' + '; '.join(
                 f'{n["name"]} ({n["method"]}_tiny_scratch) {_spread(n["supervised"])}'
                 for n in refs['networks'].values())
             + '. Read each method\'s probes and fine-tune against the random-init row of '
             'its own network. That row\'s fine-tune 10% is the same recipe from random '
             'weights (configs/finetune.py:METHOD_tiny_scratch), '
             + _differences_text(refs.get('differences', {})) + '.')
  return text


def _differences_text(differences: dict[str, dict[str, dict[str, list]]]) -> str:
  """Where each row's fine-tune recipe and its network's from scratch
  differ, in words."""
  same, parts = [], []
  for rows in differences.values():
    for row, diff in rows.items():
      if not diff:
        same.append(row)
      else:
        parts.append(f'{row}\'s ' + ', '.join(f'{k} {a} (from scratch: {b})'
                                               for k, (a, b) in diff.items()))
  if not parts:
    return 'for every row'
  return (f'for {", ".join(same)}; the others\' own differ in ' if same
          else 'except that the rows\' own differ in ') + '; '.join(parts)


def _grid_edge(lr: float, held_out_by_lr: dict[str, float | None]) -> str | None:
  """'top of the grid' / 'bottom of the grid' when `lr` is the grid's
  largest / smallest (a diverged lr counts: past it is no better)."""
  grid = [float(k) for k in held_out_by_lr]
  if len(grid) < 2:
    return None
  return ('top of the grid' if lr == max(grid) else
          'bottom of the grid' if lr == min(grid) else None)


def plot(results: dict[str, Any], path: str, data: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
  for entry in ENTRIES:
    r = results.get(entry.key)
    if r is None or r['lr'] is None:
      continue
    per_step = r['cost']['seconds_per_step'] / 60
    ax.plot([p['step'] * per_step for p in r['curve']], [100 * p['top1'] for p in r['curve']],
            'o-', label=entry.name)
  refs = results.get('references')
  if refs:
    styles = [':', '-.', (0, (1, 4)), (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    lines = [(n['random'], f'random init, {n["name"]}', styles[k % len(styles)])
             for k, n in enumerate(refs['networks'].values())]
    for rows, name, style in lines + [(refs['pixels'], 'raw pixels', '--')]:
      ax.axhline(100 * sum(s['probe100'] for s in rows) / len(rows), color='grey',
                 linestyle=style, linewidth=1, label=name)
  ax.set_xlabel('pretraining minutes on this machine (steps x measured ms/step)')
  ax.set_ylabel('linear probe top-1 (%)')
  ax.set_title(f'Linear probe against pretraining time ({data}): each method\'s seed-0 '
               'run; references (grey) their mean', fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))  # beside the curves
  fig.tight_layout()
  tmp = f'{path}.tmp{os.getpid()}.png'
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, path)


# -- the script --------------------------------------------------------------------------

def script():
  """Defines the flags (at run time, so that tests can import this module)
  and returns the absl main."""
  workdir = flags.DEFINE_string('workdir', '/tmp/ssl_jax_compare',
                                'Where every run goes (--quick: /tmp/ssl_jax_compare_quick).')
  data_dir = flags.DEFINE_string('data_dir', None, 'tfds data_dir (default: tfds default).')
  quick = flags.DEFINE_bool('quick', False, 'A smoke run: the small upright dataset, '
                             'pretraining 8x and fine-tunes 4x shorter, one learning rate '
                             '(not a measurement).')
  seeds = flags.DEFINE_integer('seeds', 3, 'Seeds per method (mean ± std over them).')
  images = flags.DEFINE_integer('images', 64_000, 'Images seen by every pretraining.')
  lr_grid = flags.DEFINE_list('lrs', ['3e-4', '1e-3', '3e-3'], 'The pretraining lr grid.')
  methods = flags.DEFINE_list('methods', [], 'Rows to run (default: all): ' + ', '.join(
      e.key for e in ENTRIES) + ', references.')
  timing = flags.DEFINE_integer('timing_steps', 20, 'Steps timed per method.')
  ledger_file = flags.DEFINE_string(
      'ledger', os.path.join(ablation.RESULTS, 'compare.json'),
      'The JSON file of finished pretrainings and their evaluations (read, then extended); '
      '"" keeps none. Default: the committed one (a --quick run keeps none unless given one).')

  def main(argv):
    del argv
    from ssl_jax.core import console, provenance
    known = [e.key for e in ENTRIES] + ['references']
    picked = methods.value or known
    bad = [m for m in picked if m not in known]
    if bad:
      raise app.UsageError(f'--methods: {", ".join(bad)} unknown; choose from {", ".join(known)}')
    try:
      lrs = tuple(float(v) for v in lr_grid.value)
    except ValueError:
      raise app.UsageError(f'--lrs={",".join(lr_grid.value)}: numbers, e.g. 3e-4,1e-3') from None
    if quick.value:
      lrs = lrs[len(lrs) // 2:][:1]
    s = Setting(images=images.value, quick=quick.value, data_dir=data_dir.value)
    # A smoke run's directories are not a measurement's: they would be read
    # back (or refused, being of another dataset) by the full run.
    root = workdir.value + ('_quick' if s.quick and not workdir.present else '')
    print('produced by:', provenance.line(), flush=True)
    ledger = ledger_lib.from_flag(ledger_file, quick=s.quick, setting={
        'benchmark': 'compare', 'quick': s.quick, 'images': s.images, 'lrs': list(lrs)})
    console.quiet_library_logs()
    t0 = time.perf_counter()
    try:
      ledger.check({**{f'{e.key}/': _spec(e) for e in ENTRIES},  # before anything runs
                    **_reference_specs()})
      jobs = {e.key: functools.partial(run_entry, e, root, s, lrs, seeds.value, ledger)
              for e in ENTRIES if e.key in picked}
      if 'references' in picked:
        jobs['references'] = functools.partial(run_references, root, s, seeds.value, ledger)
      results = share_out(jobs)
    except LedgerError as e:
      raise app.UsageError(str(e)) from None
    for entry in ENTRIES:  # timed back to back, in this one process
      if entry.key in results and results[entry.key]['lr'] is not None:
        results[entry.key]['cost'] = cost(entry, results[entry.key]['lr'], s, timing.value)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'compare.json'), 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)
    keys = [k for r in results.values() for k in r['keys']]
    text = (table(results) + '\n' + ''.join(f'\nMeasured by: {p}'
                                             for p in ledger.producers(keys))
            + f'\n\nTime: {ledger.time_line(keys)}.')
    title = (f'Every method on {s.data}, {s.images // (8 if s.quick else 1)} images seen each; '
             f'mean ± std over {seeds.value} seeds; lr chosen on held-out images from '
             f'{", ".join(map(str, lrs))}, extended past an edge where the best was there '
             f'(below); {time.perf_counter() - t0:.0f} s in this invocation')
    with open(os.path.join(root, 'compare.md'), 'w', encoding='utf-8') as f:
      f.write(f'{title}\n\n{text}\n')
    plot(results, os.path.join(root, 'compare.png'), s.data)
    print(f'\n{title}\n\n{text}\n\nplot: {os.path.join(root, "compare.png")}')

  return main


if __name__ == '__main__':
  app.run(script())
