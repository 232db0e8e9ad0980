"""Keras and scikit-learn models to ONNX, parity checks, and the versioned model bundle.

Importing ``export`` (or ``export.bundle``) is light: onnxruntime and the standard library.
The converters live in ``export.convert``, which imports TensorFlow, and are never needed to
serve. Command line: ``python -m export --help``.
"""

from .bundle import Bundle, BundleError, load_bundle, read_current, write_bundle

__all__ = ["Bundle", "BundleError", "load_bundle", "read_current", "write_bundle"]
