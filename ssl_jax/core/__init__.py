"""The core: it names no method. The loop (train.py), the run's assembly
(assembly.py), the train step (step.py), sharding, checkpoints, metrics,
optimizers, config validation and the sweep."""
