"""The device Mesh and the shardings of batches and of the train state.

The mesh has two axes: 'data' and 'fsdp'. Batches are split over both. Under
the 'replicate' rule every parameter (and optimizer moment) is replicated;
under 'fsdp' each array of at least `fsdp_min_size` elements is split along
its largest dimension that the 'fsdp' axis divides, and gathered by XLA where
it is used (ZeRO-3 / FSDP style).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')


def make_mesh(fsdp_axis_size: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: every device)."""
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) % fsdp_axis_size:
    raise ValueError(f'fsdp_axis_size={fsdp_axis_size} does not divide the '
                     f'{len(devices)} devices')
  shape = (len(devices) // fsdp_axis_size, fsdp_axis_size)
  auto = (AxisType.Auto,) * len(BATCH_AXES)  # XLA propagates shardings.
  if len(devices) == len(jax.devices()):  # topology-aware device order
    return jax.make_mesh(shape, BATCH_AXES, devices=devices, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), BATCH_AXES, axis_types=auto)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int) -> P:
  if axis_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, rule: str,
                    min_size: int) -> Any:
  """NamedShardings for every leaf of a (shape-only) train state."""
  if rule not in ('replicate', 'fsdp'):
    raise ValueError(f"unknown sharding rule {rule!r}: 'replicate' or 'fsdp'")
  axis_size = mesh.shape['fsdp'] if rule == 'fsdp' else 1
  return jax.tree.map(
      lambda x: NamedSharding(mesh, _fsdp_spec(x.shape, axis_size, min_size)),
      abstract_state)


def to_global(local: dict[str, np.ndarray], sharding: NamedSharding,
              keys: Sequence[str] = ('image', 'label', 'valid')) -> dict[str, jax.Array]:
  """This process's slice of a batch -> global jax.Arrays split over `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items() if k in keys}
