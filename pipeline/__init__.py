"""Generic benchmark pipeline: YAML specs -> runs -> Slurm/local executors -> run records -> reports.

Knows nothing about ECC or KV caches; tasks are named by dotted path in specs.
"""

from pipeline.context import RunContext

__all__ = ["RunContext"]
