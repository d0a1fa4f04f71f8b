"""The on-disk format: a safetensors-compatible container with a modelsafe manifest.

See docs/format.md for the full specification.
"""
