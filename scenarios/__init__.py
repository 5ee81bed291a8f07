"""chaosgate's scenarios: every fault family against a target, each with its verdict.

Installed as ``chaos.scenarios``: ``chaosgate`` (or ``pytest --pyargs chaos.scenarios``) runs
them in any project, against the target that project names (``--chaos-target`` or
``[tool.chaosgate] target``). In this repository, ``pytest scenarios/``.
"""
