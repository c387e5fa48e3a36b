"""jaxpost: post-training language models in JAX."""
