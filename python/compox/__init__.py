"""Algorithm-side API of the compox server.

Algorithms import runners and schemas from :mod:`compox.algorithm_utils`; the Rust worker
process drives executions through :func:`compox._worker.run_job`, and the deployer prepares
module packages through :func:`compox._deploy_tools.process_package`. Sub-packages are not
imported here so that ``import compox`` stays cheap inside the worker.
"""

__version__ = "3.2.0"
