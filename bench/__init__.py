"""refgate's benchmark harness: ``python -m bench.run`` (see ``bench/README.md``).

Not part of the service: nothing under ``app/`` imports it, and the package is
not installed (run it from the repository root).
"""
