# The native runtime is a cffi extension; everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["kvconvert/_build_native.py:ffibuilder"])
