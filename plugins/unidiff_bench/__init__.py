"""The diffusion-vs-autoregressive benchmark as a plugin: ``unidiff bench`` (`unidiff_bench.command`).

It registers one command and nothing else, exactly as a third-party plugin would; its modules load only when the
command runs.
"""

from unidiff.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_commands(register):
    register("bench", "unidiff_bench.command:main",
             help="diffusion vs autoregressive generation, one workload, one run")
