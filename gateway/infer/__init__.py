"""Infer: fetch, load and run the Ribeiro et al. 2020 Keras model.

Import the sub-modules directly.  This package imports nothing heavy:
TensorFlow is imported only by :mod:`gateway.infer.loader`,
:mod:`gateway.infer.runner` and :mod:`gateway.infer.demo`, when they load
or write a model.
"""
