"""`python -m ssl_jax.palette --config=configs/igpt.py:VARIANT`: the
documented name of iGPT's palette fitter, which lives with its method in
ssl_jax/methods/igpt/palette.py (`python -m ssl_jax.methods.igpt.palette`)."""

if __name__ == '__main__':
  from ssl_jax.methods.igpt import palette
  palette.cli()
