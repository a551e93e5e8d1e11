"""Helpers that the tests and the benchmarks share (like ``numpy.testing``): throwaway
copies of this project, stage subprocesses, throwaway servers (``mlflow server``,
PostgreSQL). Nothing in the pipeline imports them; they need a git checkout of the project.
"""
