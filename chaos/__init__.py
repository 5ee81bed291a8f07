"""``chaos``: fault injectors, failpoints, stack capture, the history checker and the pytest plugin.

Its injectors arrive with issue C1; this package is reserved for them.
"""

__all__: list[str] = []
