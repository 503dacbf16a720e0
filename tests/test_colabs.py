"""colabs/: each notebook's .ipynb is its jupytext percent script paired
(same cells, no outputs stored), and each executes end to end on the CPU
with nbclient at a few steps (the slow tier)."""

import os

import pytest
from conftest import ROOT

COLABS = os.path.join(ROOT, 'colabs')
NOTEBOOKS = ('quickstart', 'masks', 'probe')


def _sources(notebook):
  return [(c.cell_type, c.source) for c in notebook.cells]


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebooks_are_paired_with_their_scripts_and_stored_without_outputs(name):
  import jupytext
  import nbformat
  script = jupytext.read(os.path.join(COLABS, f'{name}.py'))
  stored = nbformat.read(os.path.join(COLABS, f'{name}.ipynb'), as_version=4)
  assert _sources(stored) == _sources(script), (
      f'colabs/{name}.ipynb differs from colabs/{name}.py: '
      f'run jupytext --sync colabs/{name}.py')
  assert all(not c.get('outputs') for c in stored.cells if c.cell_type == 'code')
  parameters = [c for c in stored.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(parameters) == 1  # one cell of parameters, which the test replaces
  assert stored.cells[0].cell_type == 'markdown'


PARAMETERS = {
    'quickstart': "STEPS = 3\nWORKDIR = {workdir!r}\nDATA_DIR = {shapes!r}\nREPO = ''",
    'masks': "NUM_IMAGES = 2\nSEED = 0\nREPO = ''",
    'probe': "STEPS = 4\nPRETRAINED = ''\nWORKDIR = {workdir!r}\nDATA_DIR = {small!r}\nREPO = ''",
}


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_executes_end_to_end(name, tmp_path, data_dir, shapes_data_dir):
  import jupytext
  from nbclient import NotebookClient
  notebook = jupytext.read(os.path.join(COLABS, f'{name}.py'))
  cell = next(c for c in notebook.cells if 'parameters' in c.metadata.get('tags', []))
  cell.source = PARAMETERS[name].format(workdir=str(tmp_path), shapes=shapes_data_dir,
                                        small=data_dir)
  client = NotebookClient(notebook, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': ROOT}})
  client.execute()
  errors = [o for c in notebook.cells for o in c.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors
  images = [o for c in notebook.cells for o in c.get('outputs', [])
            if 'image/png' in o.get('data', {})]
  assert images, 'every notebook draws something'
