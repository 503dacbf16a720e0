"""The architecture holds: the import contracts of .importlinter (layers, a
core that imports no method, independent methods, no cycles), no method's
name in the core's modules, and every registered method implements the
declared interface."""

import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from ssl_jax.methods import base, registry

CORE = ('ssl_jax/core', 'ssl_jax/tasks', 'ssl_jax/evaluate', 'ssl_jax/config', 'ssl_jax/sharding.py',
        'ssl_jax/api.py', 'ssl_jax/pictures.py', 'ssl_jax/sample.py')


def _lint(cwd, config):
  """import-linter's exit status (0: every contract kept) and its report."""
  code = ('import sys; from importlinter.cli import lint_imports; '
          f'sys.exit(lint_imports(config_filename={config!r}, no_cache=True))')
  env = dict(os.environ, PYTHONPATH=cwd)
  out = subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
  return out.returncode, out.stdout + out.stderr


def test_import_contracts_are_kept():
  code, report = _lint(ROOT, '.importlinter')
  assert code == 0, report


def test_a_cycle_breaks_the_contract(tmp_path):
  """The acyclic contract fails on a package whose modules import each other."""
  pkg = tmp_path / 'cyclic'
  pkg.mkdir()
  (pkg / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('from cyclic import b\n')
  (pkg / 'b.py').write_text('from cyclic import a\n')
  (tmp_path / 'contracts.ini').write_text(textwrap.dedent('''\
      [importlinter]
      root_packages =
          cyclic

      [importlinter:contract:acyclic]
      name = acyclic
      type = acyclic_siblings
      ancestors =
          cyclic
      '''))
  code, report = _lint(str(tmp_path), 'contracts.ini')
  assert code == 1 and 'BROKEN' in report, report


def _core_files():
  for entry in CORE:
    path = os.path.join(ROOT, entry)
    if os.path.isfile(path):
      yield path
    for folder, _, files in os.walk(path):
      yield from (os.path.join(folder, f) for f in files if f.endswith('.py'))


def test_core_modules_name_no_method():
  names = [n for n in registry.names() if n != 'pixels']  # 'pixels' is also a word
  pattern = re.compile(r'\b(' + '|'.join(names) + r')\b|[\'"]pixels[\'"]', re.IGNORECASE)
  found = [f'{os.path.relpath(p, ROOT)}:{i}: {line.strip()}' for p in _core_files()
           for i, line in enumerate(open(p), 1) if pattern.search(line)]
  assert not found, '\n'.join(found)


@pytest.mark.parametrize('name', registry.names())
def test_registered_methods_implement_the_interface(name):
  method = registry.get(name)
  assert issubclass(method, base.Method) and method.name == name
  assert not getattr(method, '__abstractmethods__', None), method.__abstractmethods__
  assert method.state_in_evaluation in base.Method.STATE_IN_EVALUATION
  capabilities = {'layer_decay': 'layer_of', 'generative_finetune': 'finetune_features',
                  'draws_pictures': 'pictures', 'samples': 'sample_grids'}
  for flag, member in capabilities.items():  # a declared capability is implemented
    if getattr(method, flag):
      assert getattr(method, member) is not getattr(base.Method, member), (flag, member)


def test_unknown_method_names_the_registered_ones():
  with pytest.raises(KeyError, match='registered: ' + ', '.join(registry.names())):
    registry.get('simclr')
