"""benchmarks/accelerator.py: says there is no accelerator here, and its
measuring path works (on the CPU, with --cpu, at the tiny size)."""

import json

import pytest

from benchmarks import accelerator


def test_without_an_accelerator_it_says_so_and_exits_0(capsys):
  assert accelerator.main([]) == 0
  assert capsys.readouterr().out.startswith('no accelerator: JAX found only cpu devices')


def test_bad_arguments_are_refused():
  with pytest.raises(SystemExit):
    accelerator.main(['--methods=mae,simclr'])


@pytest.mark.slow
def test_measures_a_step_and_refuses_what_a_kernel_cannot_run(tmp_path, capsys):
  out = tmp_path / 'rows.json'
  assert accelerator.main(['--cpu', '--variant=tiny', '--methods=mae,randsac', '--steps=1',
                           '--batch_per_device=2', '--attention=splash', f'--out={out}']) == 0
  mae, randsac = json.loads(out.read_text())
  assert mae['attention'] == 'splash' and mae['batch_size'] == 16  # 2 x 8 devices
  assert 0 < mae['mfu'] <= mae['hfu'] * 1.5 and mae['model_flops'] > 0
  assert mae['compile_s'] > 0 and mae['peak_memory_bytes'] > 0
  assert 'no per-example mask' in randsac['error']  # RandSAC's segment masks
  printed = capsys.readouterr().out
  assert '| mae | splash | 16 |' in printed and '| randsac | failed:' in printed


def test_a_pod_sized_fsdp_group_shrinks_to_the_devices_found(tmp_path):
  # iGPT-L's paper config shards over FSDP groups of 32 (a v3-32); here, 8 devices.
  config = accelerator.paper_config('igpt', 1, 'xla', str(tmp_path))
  assert config.sharding.rule == 'fsdp' and config.sharding.fsdp_axis_size == 8
  assert accelerator.paper_config('mae', 1, 'xla', str(tmp_path)).sharding.fsdp_axis_size == 1
