"""Benchmarks of module-service-controller against a real local control plane (``python -m bench``).

Every benchmark brings up its own control plane, runs the controller as a subprocess (so its RSS and CPU
come from /proc and its figures from its own /metrics), and measures the floor or ceiling the API server
allows in the same run. See bench/README.md.
"""
