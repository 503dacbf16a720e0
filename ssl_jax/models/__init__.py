"""Backbones and heads. Losses live in ssl_jax.objectives, not here."""
