"""glcic_jax: Globally and Locally Consistent Image Completion (Iizuka et al. 2017) in JAX/Flax."""

__version__ = "0.1.0"
