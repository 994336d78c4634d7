"""pytest loads this before tests/conftest.py, which imports TensorFlow: importing cvrl_tf
first turns TensorFlow's oneDNN CPU kernels on for the suite too (see cvrl_tf/__init__.py)."""
import cvrl_tf  # noqa: F401
