"""jouletune: find the LLM serving configuration that spends the fewest joules per token.

Components, lowest layer first (a module imports only from layers to its left):
gpu → sim → exporter → loadgen → tuner → operator.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
