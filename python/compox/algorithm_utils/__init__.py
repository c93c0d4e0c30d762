"""What algorithms import: runners, data schemas, the runner context and local debugging.

Each public name lives in a module of the same name (``compox.algorithm_utils.BaseRunner``
holds ``BaseRunner``). Nothing is imported here on purpose, so that the module and class of
the same name never shadow each other and importing one runner stays cheap.
"""
