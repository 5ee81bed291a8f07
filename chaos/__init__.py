"""``chaos``: fault injectors, failpoints, stack capture, the history checker and the pytest plugin.

So far it holds the process-tree helpers that injectors and tests share; the injectors arrive
with issue C1.
"""

from ._processes import descendants, is_gone, wait_gone, wait_until

__all__ = ["descendants", "is_gone", "wait_gone", "wait_until"]
