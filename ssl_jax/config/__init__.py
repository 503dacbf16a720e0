"""Config checks (they import nothing of ssl_jax)."""

from ssl_jax.config.checks import ConfigError, flatten, incompatible_keys, to_json

__all__ = ['ConfigError', 'flatten', 'incompatible_keys', 'to_json']
