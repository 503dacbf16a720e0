"""benchmarks/ledger.py and its use by benchmarks/ablation.py: a long
benchmark resumes from the finished units in its committed JSON file, on
any machine, and refuses entries of another setting or definition."""

import json
import os
import time

import pytest

from benchmarks import ablation
from benchmarks.ledger import Ledger, LedgerError


def test_a_measured_unit_is_read_back_by_a_new_ledger_and_not_measured_again(tmp_path):
  path = str(tmp_path / 'results' / 'bench.json')
  calls = []

  def measure():
    calls.append(1)
    time.sleep(0.2)
    return {'probe': 0.5}

  first = Ledger(path, {'quick': False})
  assert first.measured('row/seed0', {'k': 1}, measure) == {'probe': 0.5}
  again = Ledger(path, {'quick': False})
  assert again.measured('row/seed0', {'k': 1}, measure) == {'probe': 0.5}
  assert len(calls) == 1
  assert os.listdir(tmp_path / 'results') == ['bench.json']  # no temporary file left
  with open(path) as f:
    stored = json.load(f)
  assert stored['entries']['row/seed0']['produced_by']['lock']  # what produced it
  assert 0.2 <= stored['entries']['row/seed0']['seconds'] < 60  # and how long it took
  # An entry from before the ledger kept times is counted apart.
  again.entries['row/seed1'] = {k: v for k, v in again.entries['row/seed0'].items()
                                if k != 'seconds'}
  line = again.time_line(['row/seed0', 'row/seed1'])
  assert line.startswith('1 of its 2 units took 0.0 h in the processes'), line
  assert line.endswith('; 1 untimed (measured before the ledger kept times, or by a process '
                       'paused while it ran)'), line


def test_processes_sharing_a_ledger_keep_each_others_entries(tmp_path):
  """Two ledgers on one file (two processes, e.g. --methods split over
  machines): each write merges into the file as it is, so neither drops
  the other's entries; a unit the other finished is read, not measured."""
  import threading
  path = str(tmp_path / 'results' / 'bench.json')
  a, b = Ledger(path, {'quick': False}), Ledger(path, {'quick': False})
  a.put('x/seed0', None, 1)
  b.put('y/seed0', None, 2)  # b read the file before a wrote x
  a.put('z/seed0', None, 3)
  assert set(Ledger(path, {'quick': False}).entries) == {'x/seed0', 'y/seed0', 'z/seed0'}
  late = Ledger(path, {'quick': False})
  b.put('w/seed0', None, 4)
  assert late.measured('w/seed0', None, lambda: pytest.fail('measured again')) == 4
  # Writers at once: each write holds the file's lease.
  books = [Ledger(path, {'quick': False}) for _ in range(4)]
  threads = [threading.Thread(target=lambda i=i: [books[i].put(f't{i}/seed{k}', None, k)
                                                  for k in range(8)]) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  stored = Ledger(path, {'quick': False}).entries
  assert {f't{i}/seed{k}' for i in range(4) for k in range(8)} <= set(stored)
  assert len(stored) == 4 + 32
  assert sorted(os.listdir(tmp_path / 'results')) == ['bench.json']  # no lock or temporary left


def test_a_unit_another_process_holds_is_busy_and_then_read_not_measured(tmp_path):
  """measured(hold=...): the unit's lease makes a second process sharing
  the ledger skip it (locking.Busy, measuring nothing) while the first
  measures it; once the first stored it and let go, it is read back."""
  from ssl_jax import locking
  path, hold = str(tmp_path / 'bench.json'), str(tmp_path / 'units' / 'row' / 'seed0')
  mine, theirs = Ledger(path, {'quick': False}), Ledger(path, {'quick': False})
  with locking.Lease(hold, 'unit'):  # the other process, measuring it
    with pytest.raises(locking.Busy, match='in use by another run'):
      mine.measured('row/seed0', None, lambda: pytest.fail('measured twice at once'),
                    hold=hold)
    theirs.put('row/seed0', None, 7)
  assert mine.measured('row/seed0', None, lambda: pytest.fail('measured again'), hold=hold) == 7
  assert mine.measured('row/seed1', None, lambda: 8, hold=hold + '1') == 8
  assert not [f for _, _, files in os.walk(tmp_path / 'units') for f in files]  # no claim left


def test_another_setting_or_definition_is_refused_with_what_differs(tmp_path):
  path = str(tmp_path / 'bench.json')
  Ledger(path, {'quick': False}).put('row/seed0', {'overrides': [['a', 1]]}, 0.5)
  with pytest.raises(LedgerError, match=r"another setting.*'quick': False.*'quick': True"):
    Ledger(path, {'quick': True})
  with pytest.raises(LedgerError, match=r"'row/seed0' was measured for .*\['a', 1\].*"
                                           r"\['a', 2\].*delete that entry"):
    Ledger(path, {'quick': False}).get('row/seed0', {'overrides': [['a', 2]]})


def test_a_damaged_ledger_is_named(tmp_path):
  path = tmp_path / 'bench.json'
  path.write_text('{"setting": {"quick": fal')
  with pytest.raises(LedgerError, match=r'bench.json is not a ledger .*restore it from git'):
    Ledger(str(path), {'quick': False})


def test_without_a_path_nothing_is_written(tmp_path):
  book = Ledger(None, {'quick': True})
  assert book.measured('k', None, lambda: 3) == 3
  assert book.get('k', None) == 3
  assert not os.listdir(tmp_path)


def test_ablation_measures_only_the_row_seeds_missing_from_its_ledger(tmp_path, monkeypatch):
  rows = [ablation.Row('a', 'dv2', 'tiny', (('dv2.x', 1),)), ablation.Row('b', 'dv2', 'tiny')]
  measured = []

  def measure(row, index, seed, **_):
    measured.append((row.name, seed))
    return {'probe': 0.1 * (index + 1) + 0.01 * seed, 'knn': 0.2,
            'representation': 'tokens', 'finetune': 0.3}

  monkeypatch.setattr(ablation, 'measure', measure)
  path = str(tmp_path / 'bench.json')
  kwargs = dict(workdir=str(tmp_path / 'w'), quick=False, data_dir=None, timing_steps=0,
                knn=True)
  ablation.run(rows, [0], seeds=2, ledger=Ledger(path, {'b': 1}), **kwargs)
  assert measured == [('a', 0), ('a', 1)]
  table = ablation.run(rows, [0, 1], seeds=2, ledger=Ledger(path, {'b': 1}), **kwargs)
  assert measured == [('a', 0), ('a', 1), ('b', 0), ('b', 1)]  # row a read back
  assert '| a | 10.5 ± 0.7 (n=2) (tokens x2) |' in table
  assert 'Measured by: commit' in table
  changed = [ablation.Row('a', 'dv2', 'tiny', (('dv2.x', 2),)), rows[1]]
  with pytest.raises(LedgerError, match="'a/seed0'"):
    ablation.run(changed, [1, 0], seeds=3, ledger=Ledger(path, {'b': 1}), **kwargs)
  assert len(measured) == 4  # refused before b/seed2 (picked first) was measured


def test_compare_chooses_the_lr_on_held_out_and_evaluates_only_the_chosen_one(
    tmp_path, monkeypatch):
  from benchmarks import compare
  from ssl_jax.core import train
  pretrained, probed, low, curves = [], [], [], []

  class Config:
    total_steps = 10

  def fake_pretrained(entry, lr, seed, root, s):
    pretrained.append((lr, seed))
    if lr == 1e-2:
      raise train.NonFiniteLossError('loss is nan at step 3\nmore lines')
    return Config(), str(tmp_path / f'lr{lr:g}' / f'seed{seed}')

  def lr_of(workdir):
    return float(os.path.basename(os.path.dirname(workdir))[2:])

  def fake_probe100(entry, config, seed, init, workdir, s):
    probed.append((lr_of(workdir), seed))
    val = {3e-4: 0.4, 1e-3: 0.5, 3e-3: 0.6}[lr_of(workdir)]  # 3e-3 is best on held-out images
    return {'val100': val, 'probe100': 0.9 - val, 'representation': 'tokens', 'l2': 1e-4,
            'knn': 0.1, 'ridge10': 0.1}

  def fake_low_label(entry, config, seed, init, workdir, s):
    low.append((lr_of(workdir), seed))
    return {'probe10': 0.2, 'finetune10': 0.3, 'representation10': 'layer_2', 'l2_10': 1e-3}

  def fake_curve(entry, config, workdir, representation, final_top1, s):
    curves.append(lr_of(workdir))
    return [{'step': 10, 'top1': final_top1}]

  monkeypatch.setattr(compare, 'pretrained', fake_pretrained)
  monkeypatch.setattr(compare, 'probe100', fake_probe100)
  monkeypatch.setattr(compare, 'low_label', fake_low_label)
  monkeypatch.setattr(compare, 'curve', fake_curve)
  entry = compare.ENTRIES[0]
  setting = compare.Setting(images=640, quick=False, data_dir=None)
  path = str(tmp_path / 'compare.json')
  lrs = (3e-4, 1e-3, 3e-3, 1e-2)  # 1e-2 diverges
  got = compare.run_entry(entry, str(tmp_path), setting, lrs, 3, Ledger(path, {'c': 1}))
  assert got['lr'] == 3e-3
  assert pretrained == [(3e-4, 0), (1e-3, 0), (3e-3, 0), (1e-2, 0),
                        (3e-3, 0), (3e-3, 1), (3e-3, 2)]  # seed 0's read back, in a real run
  assert probed == [(3e-4, 0), (1e-3, 0), (3e-3, 0), (3e-3, 1), (3e-3, 2)]  # seed 0's kept
  assert low == [(3e-3, 0), (3e-3, 1), (3e-3, 2)] and curves == [3e-3]  # the chosen lr only
  assert got['held_out_by_lr'] == {'0.0003': 0.4, '0.001': 0.5, '0.003': 0.6, '0.01': None}
  assert got['curve'] == [{'step': 10, 'top1': pytest.approx(0.3)}]
  assert [s['probe100'] for s in got['seeds']] == pytest.approx([0.3] * 3)
  diverged = Ledger(path, {'c': 1}).entries[f'{entry.key}/lr0.01/select']['value']
  assert diverged == {'diverged': 'loss is nan at step 3'}
  again = compare.run_entry(entry, str(tmp_path), setting, lrs, 4, Ledger(path, {'c': 1}))
  assert pretrained[7:] == [(3e-3, 3)]  # only the new seed: the diverged lr is not retried
  assert again['keys'][-1] == f'{entry.key}/lr0.003/seed3'
  assert len(again['keys']) == 8  # 4 selection points and 4 seeds

  def every_lr_diverges(entry, lr, seed, root, s):
    raise train.NonFiniteLossError('loss is inf')

  monkeypatch.setattr(compare, 'pretrained', every_lr_diverges)
  lost = compare.run_entry(compare.ENTRIES[1], str(tmp_path), setting, (1e-3,), 3,
                           Ledger(path, {'c': 1}))
  assert lost['lr'] is None and lost['seeds'] == []
  results = {entry.key: {**got, 'cost': {'params': 1e6, 'seconds_per_step': 0.5,
                                         'flops_per_step': 2e9}},
             compare.ENTRIES[1].key: lost}
  results[entry.key]['seeds'][2] = {'diverged': 'loss is nan at step 9'}
  table = compare.table(results)
  assert f'| {entry.name} | 0.003 (1 of 3 seeds diverged) | 1.00M | 500 | 0.1 |' in table
  assert '| 30.0 ± 0.0 (n=2) |' in table  # the diverged seed is left out of the spread
  # What each probe chose (and how many seeds chose it), the 100% one and the 10% one.
  assert '| tokens l2=0.0001 x2 | layer_2 l2=0.001 x2 |' in table
  assert f'| {compare.ENTRIES[1].name} | every lr diverged |' in table
  assert f'{entry.name} 0.0003 40.0, 0.001 50.0, 0.003 60.0, 0.01 diverged' in table
  # Chosen at the grid's edge: the table says so.
  results[entry.key]['held_out_by_lr'] = {'0.0003': 0.4, '0.001': 0.5, '0.003': 0.6}
  assert (f'| {entry.name} | 0.003 (top of the grid; 1 of 3 seeds diverged) |'
          in compare.table(results))
  results[entry.key].update(lr=3e-4, held_out_by_lr={'0.0003': 0.6, '0.001': 0.5})
  assert f'| {entry.name} | 0.0003 (bottom of the grid; 1 of' in compare.table(results)

def test_compare_processes_sharing_a_workdir_measure_each_unit_once(tmp_path, monkeypatch):
  """Two processes (threads here) run the same comparison on one workdir and
  ledger: each unit is measured by one of them, both do some of the work
  (one that meets a unit the other holds does the others first, then
  waits), and both make the same table from the entries."""
  import functools
  import threading
  from benchmarks import compare
  measured, put = [], Ledger.put

  class Config:
    total_steps = 10

  def note(ledger, key, *args, **kwargs):
    measured.append((key, threading.current_thread().name))
    put(ledger, key, *args, **kwargs)

  def fake_pretrained(entry, lr, seed, root, s):
    time.sleep(0.3)
    return Config(), str(tmp_path / entry.key / f'lr{lr:g}' / f'seed{seed}')

  def fake_probe100(entry, config, seed, init, workdir, s):
    val = float(os.path.basename(os.path.dirname(workdir))[2:])  # the largest lr is best
    return {'val100': val, 'probe100': 0.5, 'representation': 'tokens', 'l2': 1e-4,
            'knn': 0.1, 'ridge10': 0.1}

  monkeypatch.setattr(Ledger, 'put', note)
  monkeypatch.setattr(compare, 'pretrained', fake_pretrained)
  monkeypatch.setattr(compare, 'probe100', fake_probe100)
  monkeypatch.setattr(compare, 'low_label', lambda *a: {'probe10': 0.2, 'finetune10': 0.3})
  monkeypatch.setattr(compare, 'curve', lambda *a: [])
  setting = compare.Setting(images=640, quick=False, data_dir=None)
  path, root = str(tmp_path / 'compare.json'), str(tmp_path / 'w')
  start, results = threading.Barrier(2), {}

  def process(name):
    ledger = Ledger(path, {'c': 1})
    jobs = {e.key: functools.partial(compare.run_entry, e, root, setting, (1e-3, 3e-3), 2,
                                     ledger) for e in compare.ENTRIES[:2]}
    start.wait()
    results[name] = compare.share_out(jobs, poll_s=0.05)

  threads = [threading.Thread(target=process, args=(n,), name=n) for n in 'AB']
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  units = [key for key, _ in measured]
  assert len(units) == len(set(units)) == 2 * (2 + 2 + 2), measured  # grid, extension, seeds
  assert {name for _, name in measured} == {'A', 'B'}, measured
  assert results['A'] == results['B'] and list(results['A']) == [e.key for e in
                                                                 compare.ENTRIES[:2]]
  assert [r['lr'] for r in results['A'].values()] == [3e-2, 3e-2]


def test_share_out_runs_other_jobs_first_and_comes_back_in_order():
  from benchmarks import compare
  from ssl_jax import locking
  calls, busy = [], {'first': 2}

  def job(name):
    def run():
      calls.append(name)
      if busy.get(name):
        busy[name] -= 1
        raise locking.Busy(f'{name} is in use by another run')
      return name.upper()
    return run

  got = compare.share_out({n: job(n) for n in ('first', 'second')}, poll_s=0.01)
  assert got == {'first': 'FIRST', 'second': 'SECOND'} and list(got) == ['first', 'second']
  assert calls == ['first', 'second', 'first', 'first']
  tried = []

  def unit(i):
    tried.append(i)
    if i == 0:
      raise locking.Busy('unit 0 is in use')
    return i
  with pytest.raises(locking.Busy, match='unit 0'):
    compare.each([lambda i=i: unit(i) for i in range(3)])
  assert tried == [0, 1, 2]  # the others were measured meanwhile



@pytest.mark.parametrize('held_out, tried, chosen, marked', [
    # The best at the top: the next lr up, and the one after while it is best.
    ({1e-2: 0.6, 3e-2: 0.55}, [1e-2, 3e-2], 1e-2, False),
    ({1e-2: 0.6, 3e-2: 0.7}, [1e-2, 3e-2], 3e-2, True),  # two past the edge at most
    ({1e-2: None}, [1e-2], 3e-3, False),  # a diverged lr ends it
    # The best at the bottom: downwards alike.
    ({3e-4: 0.8, 1e-4: 0.7}, [1e-4], 3e-4, False),
])
def test_compare_tries_lrs_past_an_edge_of_the_grid_while_the_best_is_there(
    tmp_path, monkeypatch, held_out, tried, chosen, marked):
  from benchmarks import compare
  values = {3e-4: 0.3, 1e-3: 0.4, 3e-3: 0.5, **held_out}
  selected = []

  def fake_selection_point(entry, lr, root, s, ledger):
    selected.append(lr)
    if values[lr] is None:
      return {'diverged': 'loss is nan'}
    return {'val100': values[lr], 'probe100': 0.5, 'knn': 0.1, 'ridge10': 0.1,
            'representation': 'tokens', 'l2': 1e-4, 'steps': 10}

  def fake_measured_point(entry, lr, seed, root, s, ledger, selected=None):
    return {'probe100': 0.5, 'knn': 0.1, 'ridge10': 0.1, 'probe10': 0.2, 'finetune10': 0.3,
            'representation': 'tokens', 'l2': 1e-4, 'curve': []}

  monkeypatch.setattr(compare, 'selection_point', fake_selection_point)
  monkeypatch.setattr(compare, 'measured_point', fake_measured_point)
  setting = compare.Setting(images=640, quick=False, data_dir=None)
  got = compare.run_entry(compare.ENTRIES[0], str(tmp_path), setting, (3e-4, 1e-3, 3e-3), 1,
                          Ledger(None, {}))
  assert selected == [3e-4, 1e-3, 3e-3] + tried and got['lr'] == pytest.approx(chosen)
  assert list(got['held_out_by_lr']) == [f'{lr:g}' for lr in sorted(selected)]
  assert len(got['keys']) == len(selected) + 1
  got['cost'] = {'params': 1e6, 'seconds_per_step': 0.5, 'flops_per_step': 2e9}
  row = compare.table({compare.ENTRIES[0].key: got}).splitlines()[2]
  assert ('of the grid' in row) == marked, row


def test_compare_records_a_diverged_fine_tune_and_a_seed_0_rerun_that_diverged(
    tmp_path, monkeypatch):
  """A fine-tune whose loss diverges is a result (None in the ledger, left
  out of the spread), not a crash that every rerun would repeat; a seed-0
  run that diverges where its selection point did not (run again on
  another machine) leaves the plot without a curve, not the table."""
  from benchmarks import compare
  from ssl_jax.core import train

  def diverges(config, workdir):
    raise train.NonFiniteLossError('loss is nan at step 5\nmore lines')

  monkeypatch.setattr(train, 'run_to_end', diverges)
  assert compare.fine_tuned(None, str(tmp_path / 'ft')) is None

  class Config:
    total_steps = 10

  def pretrained(entry, lr, seed, root, s):
    if seed == 0 and os.path.exists(tmp_path / 'selected'):
      raise train.NonFiniteLossError('loss is inf at step 7')
    (tmp_path / 'selected').write_text('')
    return Config(), str(tmp_path / f'seed{seed}')

  monkeypatch.setattr(compare, 'pretrained', pretrained)
  monkeypatch.setattr(compare, 'probe100', lambda *a: {
      'val100': 0.5, 'probe100': 0.4, 'representation': 'tokens', 'l2': 1e-4, 'knn': 0.1,
      'ridge10': 0.1})
  monkeypatch.setattr(compare, 'low_label', lambda *a: {'probe10': 0.2, 'finetune10': None})
  setting = compare.Setting(images=640, quick=False, data_dir=None)
  got = compare.run_entry(compare.ENTRIES[0], str(tmp_path), setting, (1e-3,), 2,
                          Ledger(str(tmp_path / 'compare.json'), {'c': 1}))
  assert got['curve'] == [] and got['seeds'][0] == {'diverged': 'loss is inf at step 7'}
  table = compare.table({compare.ENTRIES[0].key: {**got, 'cost': {
      'params': 1e6, 'seconds_per_step': 0.5, 'flops_per_step': 2e9}}})
  assert '| 0.001 (1 of 2 seeds diverged) |' in table
  assert '| - | 10.0 (n=1) | tokens l2=0.0001 x1 |' in table  # fine-tune: diverged
  # No FLOP count from XLA: '-', not 'nan'.
  table = compare.table({compare.ENTRIES[0].key: {**got, 'cost': {
      'params': 1e6, 'seconds_per_step': 0.5, 'flops_per_step': None}}})
  assert '| 1.00M | 500 | 0.1 | - |' in table
  compare.plot({compare.ENTRIES[0].key: {**got, 'cost': {'seconds_per_step': 0.5}}},
               str(tmp_path / 'compare.png'), 'data')
  assert os.path.getsize(tmp_path / 'compare.png') > 0


def test_compare_references_every_network_from_scratch_and_resumes_per_unit(
    tmp_path, monkeypatch):
  """Random init and the supervised upper reference of every distinct
  network of the table (a method's gain is read against its own network's:
  Selfie's and DV2's fit the 10% labels from scratch), raw pixels, each
  network and seed a ledger unit of its own that a rerun reads back."""
  from benchmarks import compare
  from ssl_jax.core import validation
  from ssl_jax.methods.igpt import palette
  calls = []
  # Each reference network's key and the ENTRIES key whose network it runs.
  nets = {'patchformer': 'patchformer', 'vit': 'mae', 'igpt': 'igpt_ar', 'selfie': 'selfie',
          'dv2': 'dv2'}
  value = {'patchformer': 0.1, 'mae': 0.2, 'igpt_ar': 0.15, 'selfie': 0.3, 'dv2': 0.4}

  def fake_evaluations(entry, config, seed, init, workdir, s):
    calls.append(('random', entry.key, seed, init, os.path.relpath(workdir, tmp_path)))
    v = value[entry.key] + seed / 100
    return {'knn': v, 'probe100': v, 'probe10': v, 'finetune10': 2 * v, 'ridge10': v,
            'representation': f'{entry.key} features',
            'representation10': f'{entry.key} features 10%'}

  def fake_fine_tuned(config, workdir):
    calls.append(('supervised', config.data.label_fraction, config.init.workdir,
                  os.path.relpath(workdir, tmp_path)))
    return 0.5 + value[nets[workdir.split(os.sep)[-3]]]  # .../NETWORK/seedS/supervised

  def fake_sweep(config, workdir):
    calls.append(('pixels', config.data.label_fraction, os.path.relpath(workdir, tmp_path)))
    return [{'chosen': True, 'top1': 0.25, 'knn_top1': 0.2, 'ridge_10shot_top1': 0.15}]

  monkeypatch.setattr(compare, 'evaluations', fake_evaluations)
  monkeypatch.setattr(compare, 'fine_tuned', fake_fine_tuned)
  monkeypatch.setattr(compare, 'sweep', fake_sweep)
  setting = compare.Setting(images=640, quick=False, data_dir=None)
  path = str(tmp_path / 'compare.json')
  got = compare.run_references(str(tmp_path), setting, 2, Ledger(path, {'c': 1}))
  assert [c for c in calls if c[0] == 'random'] == [
      ('random', method, seed, None, f'references/{key}/seed{seed}/random')
      for key, method in nets.items() for seed in (0, 1)]
  # The upper references: all the labels, from scratch.
  assert [c for c in calls if c[0] == 'supervised'] == [
      ('supervised', 1.0, None, f'references/{key}/seed{seed}/supervised')
      for key in nets for seed in (0, 1)]
  # Raw pixels draw nothing from a seed: one run.
  assert [c for c in calls if c[0] == 'pixels'] == [
      ('pixels', fraction, f'references/pixels/seed0/{name}')
      for fraction, name in ((1.0, 'probe100'), (0.1, 'probe10'))]
  assert got['keys'] == ([f'references/{k}/seed{s}' for k in nets for s in (0, 1)]
                         + ['references/pixels/seed0'])
  # Where each row's fine-tune recipe and its network's from scratch differ.
  differences = got['differences']
  assert differences['patchformer'] == {'PatchFormer': {}}
  assert differences['vit']['MAE'] == {}
  assert differences['vit']['multi-task ViT'] == {'classifier.representation': ['cls', 'tokens']}
  assert differences['selfie'] == {'Selfie': {'classifier.whiten': [True, False]}}
  assert differences['igpt']['iGPT AR']['classifier.generative_weight'] == [1.0, 0.0]
  assert differences['igpt']['iGPT AR'] == differences['igpt']['iGPT BERT']
  assert got['networks']['selfie']['supervised'] == pytest.approx([0.8, 0.8])
  assert got['networks']['vit']['random'][1]['probe100'] == pytest.approx(0.21)
  assert got['networks']['vit']['rows'] == ['RandSAC', 'multi-task ViT', 'MAE']

  # Each network's from-scratch fine-tunes are its method's _tiny_scratch
  # recipe from random weights (Selfie's and DV2's on the raw features).
  for key, method in nets.items():
    entry = compare._entry(method)
    config = compare.pretrain_config(entry, 1e-3, 0, setting)
    # The curve's checkpoints outlive any number of preemption saves.
    assert config.checkpoint.keep_period == config.checkpoint.every > 0, key
    tenth = compare.finetune_config(entry, config, 0, None, setting, 0.1)
    upper = compare.finetune_config(entry, config, 0, None, setting, 1.0, images=None)
    for tune in (tenth, upper):
      assert tune.init.workdir is None, key
      if method in ('selfie', 'dv2'):
        assert tune.classifier.whiten is False, key
    assert tenth.total_steps * tenth.batch_size == compare.FINETUNE_IMAGES, key
    assert upper.data.label_fraction == 1.0, key
    probe = compare.probe_config(entry, config, 0, None, setting)
    validation.validate(probe, 1, 1)
    if method == 'igpt_ar':  # the recipe's own network, not the pretraining's
      assert tenth.backbone.igpt.model.token_init == 'palette'
      # The random network's probe reads the palette its fine-tune fits.
      assert palette.resolve_path(probe.backbone) == palette.resolve_path(tenth.backbone)

  # A rerun measures only the unit it lacks.
  ledger = Ledger(path, {'c': 1})
  del ledger.entries['references/selfie/seed1']
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'entries': ledger.entries, 'setting': {'c': 1}}, f)
  calls.clear()
  again = compare.run_references(str(tmp_path), setting, 2, Ledger(path, {'c': 1}))
  assert [c[:3] for c in calls] == [('random', 'selfie', 1), ('supervised', 1.0, None)]
  assert again['networks'] == got['networks']
  # A unit measured for another network is refused before anything runs.
  ledger = Ledger(path, {'c': 1})
  ledger.entries['references/dv2/seed0']['spec']['network'] = 'selfie'
  with pytest.raises(LedgerError, match='references/dv2/seed0'):
    ledger.check(compare._reference_specs())

  table = compare.table({'references': got})
  assert ("| random init: Selfie's patch network (for Selfie) | - | - | - | - | - | "
          '30.5 ± 0.7 (n=2) | 30.5 ± 0.7 (n=2) | 30.5 ± 0.7 (n=2) | 61.0 ± 1.4 (n=2) | '
          "30.5 ± 0.7 (n=2) | selfie features | selfie features 10% |") in table
  assert ("| random init: ViT (MAE's tiny encoder) (for RandSAC, multi-task ViT, MAE) | - |"
          in table)
  assert ('| raw pixels (32x32x3; one run, nothing in it is drawn from a seed) | - | - | - | - | '
          '- | 20.0 (n=1) | 25.0 (n=1) |') in table
  assert ("Selfie's classifier.whiten True (from scratch: False)" in table
          and 'for PatchFormer, MAE;' in table), table
  assert "DV2's patch network (dv2_tiny_scratch) 90.0 ± 0.0 (n=2)" in table
  compare.plot({'references': got}, str(tmp_path / 'compare.png'), 'data')
  assert os.path.getsize(tmp_path / 'compare.png') > 0


def test_compare_fine_tunes_every_method_for_the_same_images_on_every_test_image():
  from benchmarks import compare
  setting = compare.Setting(images=64_000, quick=False, data_dir=None)
  for entry in compare.ENTRIES:
    pretrain = compare.pretrain_config(entry, 1e-3, 0, setting)
    tune = compare.finetune_config(entry, pretrain, 1, '/some/workdir', setting, 0.1)
    assert tune.total_steps * tune.batch_size == compare.FINETUNE_IMAGES, entry.name
    assert 0 <= tune.optimizer.warmup_steps < tune.total_steps
    assert tune.eval.split == 'test' and tune.data.label_fraction == 0.1
    probe = compare.probe_config(entry, pretrain, 1, '/some/workdir', setting, 0.1)
    assert probe.eval.split == 'test' and probe.seed == 1


def test_compare_curve_probes_each_kept_checkpoint_and_reuses_the_final_one(monkeypatch,
                                                                            tmp_path):
  import ml_collections
  from benchmarks import compare
  swept = []

  def fake_sweep(config, workdir):
    swept.append((config.init.step, tuple(config.feature_probe.layers)))
    return [{'chosen': False, 'top1': 0.0}, {'chosen': True, 'top1': config.init.step / 1000}]

  monkeypatch.setattr(compare, 'probe_config', lambda *a, **k: ml_collections.ConfigDict(
      {'init': {'step': None}, 'feature_probe': {'layers': (), 'ridge_shots': 10}}))
  monkeypatch.setattr(compare, 'sweep', fake_sweep)
  config = ml_collections.ConfigDict({'total_steps': 100, 'checkpoint': {'every': 20}})
  setting = compare.Setting(images=640, quick=False, data_dir=None)
  got = compare.curve(compare.ENTRIES[0], config, str(tmp_path), 'tokens', 0.77, setting)
  assert swept == [(20, ('tokens',)), (40, ('tokens',)), (60, ('tokens',)), (80, ('tokens',))]
  assert got == [{'step': 20, 'top1': 0.02}, {'step': 40, 'top1': 0.04},
                 {'step': 60, 'top1': 0.06}, {'step': 80, 'top1': 0.08},
                 {'step': 100, 'top1': 0.77}]  # the final step: the sweep's own probe


def test_from_flag_keeps_no_ledger_for_a_quick_run_at_the_default_path(tmp_path):
  from absl import app, flags
  from benchmarks import ledger as ledger_lib
  values = flags.FlagValues()
  holder = flags.DEFINE_string('ledger', str(tmp_path / 'default.json'), '', flag_values=values)
  values(['prog'])
  assert ledger_lib.from_flag(holder, quick=True, setting={'q': True}).path is None
  assert ledger_lib.from_flag(holder, quick=False, setting={'q': False}).path == str(
      tmp_path / 'default.json')
  values['ledger'].parse(str(tmp_path / 'given.json'))
  assert ledger_lib.from_flag(holder, quick=True, setting={'q': True}).path == str(
      tmp_path / 'given.json')
  (tmp_path / 'given.json').write_text('{"setting": {"q": false}, "entries": {}}')
  with pytest.raises(app.UsageError, match='another setting'):
    ledger_lib.from_flag(holder, quick=True, setting={'q': True})


def test_a_layer_sweep_is_read_back_only_for_the_config_that_measured_it(tmp_path, monkeypatch):
  """The benchmarks resume a sweep from its layers.json: read back for the
  same config (its data at another path too); refused, and left as it
  was, for another; measured when there is none."""
  from configs import linear_probe
  from ssl_jax.config.checks import ConfigError
  from ssl_jax.core import feature_probe
  measured = []
  monkeypatch.setattr(feature_probe, 'run',
                      lambda c, w, mode: measured.append((w, mode)) or [{'fresh': True}])
  config = linear_probe.get_config('patchformer_tiny')
  rows = [{'representation': 'cls', 'chosen': True, 'top1': 0.5}]
  workdir = str(tmp_path / 'sweep')
  feature_probe._write(workdir, 'layers', rows, {'chosen': 'cls'}, config)
  path = os.path.join(workdir, 'layers.json')
  before = open(path).read()
  assert feature_probe.rows_of(config, workdir) == rows
  moved = linear_probe.get_config('patchformer_tiny')
  moved.data.data_dir = str(tmp_path / 'elsewhere')
  assert feature_probe.rows_of(moved, workdir) == rows
  other = linear_probe.get_config('patchformer_tiny')
  other.eval.split = 'test'
  other.data.label_fraction = 0.1
  with pytest.raises(ConfigError) as e:
    feature_probe.rows_of(other, workdir)
  assert str(e.value).startswith(f'{path} was measured with another config: ')
  assert 'data.label_fraction (there: 1.0, now: 0.1)' in str(e.value)
  assert "eval.split (there: " in str(e.value) and "now: 'test')" in str(e.value)
  assert '\n' not in str(e.value)
  assert open(path).read() == before and not measured
  # A file written before results recorded their config reads back as it is.
  legacy = json.loads(before)
  del legacy['config']
  with open(path, 'w') as f:
    json.dump(legacy, f)
  assert feature_probe.rows_of(other, workdir) == rows and not measured
  assert feature_probe.rows_of(config, str(tmp_path / 'new')) == [{'fresh': True}]
  assert measured == [(str(tmp_path / 'new'), 'layers')]


def test_the_published_comparison_is_the_ledgers():
  """README's comparison table is benchmarks/results/compare.md's, row for
  row, and every evaluation cell of it is the mean ± std of the committed
  ledger's entries for that row (the chosen lr's seeds; each reference
  network's seeds): the published numbers are the measured ones."""
  from benchmarks import compare
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, 'benchmarks', 'results', 'compare.md'), encoding='utf-8') as f:
    rows = [line for line in f.read().splitlines() if line.startswith('| ')]
  with open(os.path.join(root, 'README.md'), encoding='utf-8') as f:
    readme = f.read()
  shown = readme.split('<!-- compare-table -->\n')[1].split('<!-- /compare-table -->')[0]
  assert shown.splitlines() == rows
  with open(os.path.join(root, 'benchmarks', 'results', 'compare.json'), encoding='utf-8') as f:
    entries = json.load(f)['entries']
  cols = slice(6, 6 + len(compare.EVALUATIONS))  # after method, lr and the four costs

  def cells(values):
    return [compare._spread([v.get(k) for v in values]) for k in compare.EVALUATIONS]

  checked = 0
  for line in rows[1:]:
    row = [c.strip() for c in line.strip('|').split('|')]
    entry = next((e for e in compare.ENTRIES if e.name == row[0]), None)
    if entry is not None:
      lr = float(row[1].split()[0])
      values = [entries[f'{entry.key}/lr{lr:g}/seed{s}']['value'] for s in range(3)]
      assert row[cols] == cells(values), row[0]
      checked += 1
    ref = next((r for r in compare.REFERENCE_NETWORKS
                if row[0].startswith(f'random init: {r.name} ')), None)
    if ref is not None:
      values = [entries[f'references/{ref.key}/seed{s}']['value']['random'] for s in range(3)]
      assert row[cols] == cells(values), row[0]
      checked += 1
  assert checked == len(compare.ENTRIES) + len(compare.REFERENCE_NETWORKS)
