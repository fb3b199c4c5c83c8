"""Compiled extension modules, built by setup.py from the Cython sources in the top-level kernels/ folder.

Import them through fastgd.backends (the Cython backend), which reports a clear error when the
build is missing; nothing here is public API.
"""
