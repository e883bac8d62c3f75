"""Helpers shared by the examples: command line, offline data, plots, Lunar Lander.

Framework-free (NumPy, matplotlib, gymnasium), so the torch and JAX versions of an
example share them. The examples import this package as ``common``: a script's own
folder (``examples/``) comes first on ``sys.path``.
"""
