"""Metric writers: TensorBoard and console through clu, plus metrics.jsonl."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface
from etils import epath

from ssl_jax.core import provenance as provenance_lib


class JsonlWriter(interface.MetricWriter):
  """Keeps one JSON object per written step in a file: {"step": s, ...}.

  On resume from step `resume_step`, lines of later steps (written by the run
  that was interrupted, and about to be recomputed identically) are dropped,
  as is a line torn by a kill, so the file holds each step once. Local files
  are appended to (and fsync'ed) at each flush; object stores (gs://) have no
  appends, so there each flush rewrites the file atomically.
  """

  def __init__(self, path: str, resume_step: int | None = None):
    self._path = path
    self._remote = '://' in path
    self._lines: list[str] = []  # the whole file, kept only for remote paths
    if resume_step is not None and epath.Path(path).exists():
      kept = []
      for line in epath.Path(path).read_text().splitlines():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record.get('step', math.inf) <= resume_step:
          kept.append(json.dumps(record) + '\n')
      write_atomic(path, ''.join(kept))
      self._lines = kept if self._remote else []
    self._file = None if self._remote else open(path, 'a', encoding='utf-8')
    self._pending: dict[int, dict[str, Any]] = {}

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = self._pending.setdefault(int(step), {'step': int(step)})
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self) -> None:
    new = [json.dumps(self._pending[step]) + '\n' for step in sorted(self._pending)]
    self._pending.clear()
    if self._file is not None:
      self._file.write(''.join(new))
      self._file.flush()
      os.fsync(self._file.fileno())
    elif new:
      self._lines += new
      write_atomic(self._path, ''.join(self._lines))

  def close(self) -> None:
    self.flush()
    if self._file is not None:
      self._file.close()


def make_writer(workdir: str, resume_step: int | None) -> metric_writers.MetricWriter:
  """TensorBoard event files + metrics.jsonl in `workdir` (process 0 only),
  and the log on every process."""
  if jax.process_index() > 0:
    return metric_writers.LoggingWriter()
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(workdir),
      JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), resume_step),
  ])


def is_accuracy(key: str) -> bool:
  return key.endswith(('top1', 'top5')) or 'shot' in key


class EvalResults:
  """Every evaluation of a run, in `eval.json` ({"evaluations": [{"step": s,
  ...}, ...], "provenance": [one record per invocation, with the step it
  started from]}) and `eval.md` (the same as a Markdown table, accuracies in
  %, with what produced it underneath), rewritten atomically after each
  evaluation. On resume from `resume_step`, results of later steps (about to
  be recomputed) are dropped; `provenance` (this invocation's record) is
  added to the saved ones."""

  def __init__(self, workdir: str, resume_step: int | None = None,
               provenance: dict[str, Any] | None = None, augmentation: str = ''):
    self.json_path = os.path.join(workdir, 'eval.json')
    self.md_path = os.path.join(workdir, 'eval.md')
    self.augmentation = augmentation  # the training augmentation, said under the table
    self.records: list[dict[str, Any]] = []
    self.provenance: list[dict[str, Any]] = []
    if resume_step is not None and epath.Path(self.json_path).exists():
      saved = json.loads(epath.Path(self.json_path).read_text())
      if isinstance(saved, list):  # written before provenance was recorded
        saved = {'evaluations': saved, 'provenance': []}
      self.records = [r for r in saved['evaluations'] if r['step'] <= resume_step]
      self.provenance = [p for p in saved['provenance']
                         if p.get('start_step', 0) <= resume_step]
    if provenance is not None:
      self.provenance.append(provenance)

  def add(self, step: int, scores: Mapping[str, float]) -> None:
    self.records = [r for r in self.records if r['step'] != step]
    self.records.append({'step': int(step), **{k: float(v) for k, v in scores.items()}})
    if jax.process_index() == 0:
      saved = {'evaluations': self.records, 'provenance': self.provenance}
      if self.augmentation:
        saved['augmentation'] = self.augmentation
      write_atomic(self.json_path, json.dumps(saved, indent=1) + '\n')
      said = f'\nTraining augmentation: {self.augmentation}\n' if self.augmentation else ''
      write_atomic(self.md_path, markdown_table(self.records) + said
                   + provenance_lib.footer(self.provenance))

  def latest(self) -> dict[str, Any] | None:
    return self.records[-1] if self.records else None


def final_evaluation(workdir: str, total_steps: int) -> dict[str, Any] | None:
  """The evaluation of a run that has reached `total_steps`, read from its
  eval.json; None while the run is unfinished."""
  last = EvalResults(workdir, resume_step=total_steps).latest()
  return last if last is not None and last['step'] == total_steps else None


def markdown_table(records: list[dict[str, Any]], first: tuple[str, ...] = ('step',)) -> str:
  """Rows of {column: value} as a Markdown table; accuracies shown in %."""
  present = {k for r in records for k in r}
  natural = lambda k: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', k)]
  columns = [c for c in first if c in present] + sorted(present - set(first), key=natural)
  head = [f'{c} (%)' if is_accuracy(c) else c for c in columns]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(columns)]
  for r in records:
    cells = []
    for c in columns:
      v = r.get(c, '')
      if isinstance(v, float):
        v = f'{100 * v:.2f}' if is_accuracy(c) else f'{v:.4g}'
      cells.append(str(v))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_atomic(path: str, text: str) -> None:
  """Replaces the file at `path` (local or gs://) with `text`, all or nothing."""
  tmp = epath.Path(path + '.tmp')
  tmp.write_text(text, encoding='utf-8')
  tmp.replace(path)
