"""ssl_jax: self-supervised representation learning on images in JAX/Flax."""

import os as _os

# Every TensorFlow import (the input pipeline, tfds) goes through this
# package. On CPUs where TensorFlow turns oneDNN on, its fused ops make the
# pipeline's float results depend on the CPU; off unless the environment
# sets it, so main.py, the benchmarks, ssl_jax.api and the tests read the
# same stream on every machine.
_os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
