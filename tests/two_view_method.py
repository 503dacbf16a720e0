"""The test method of vocabulary_method.py with two views of each image that
share their geometry (the second one colour-jittered): it checks that a
method's declared views reach its batches with no config change."""

from ssl_jax.data import ViewSpec
from vocabulary_method import Vocabulary


class TwoViewVocabulary(Vocabulary):
  name = 'vocabulary_views'

  @classmethod
  def views(cls, config):
    del config
    return (ViewSpec(min_area=0.5), ViewSpec(min_area=0.5, jitter_prob=1.0, brightness=0.4))

  @classmethod
  def share_geometry(cls, config):
    del config
    return True


METHOD = TwoViewVocabulary
