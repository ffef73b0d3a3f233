"""Infer: fetch, load and run the Ribeiro et al. 2020 Keras model."""
