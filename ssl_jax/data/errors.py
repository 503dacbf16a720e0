"""The one error of the input pipeline."""


class DataError(ValueError):
  """A dataset that cannot be read as asked (missing, wrong format, ...).

  The message says what to do about it.
  """
