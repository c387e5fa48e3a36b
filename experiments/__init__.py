"""Experiments: each module has get_config() and main(); run with `python -m experiments.NAME`."""
