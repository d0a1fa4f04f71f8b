"""Where people already train: thin adapters over the public API for Lightning, transformers and Keras.

Each module imports its framework when it is imported; ``import modelsafe`` imports none of them.
"""
