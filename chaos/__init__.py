"""``chaos``: real faults for real processes, the scenario checker, and the pytest plugin.

- process faults: ``kill``, ``terminate``, ``freeze``/``thaw``/``frozen`` behind a blast-radius
  guard (``check_target``); pickers ``workers_of`` and ``pick``.
- failpoints: ``failpoint(name)`` sites configured with ``set_failpoints`` or the environment
  variable ``CHAOSGATE_FAILPOINTS`` (fail-rs grammar); ``failpoint_counts`` of hits and firings.
  ``chaos.failpoints`` is the module a pool's own sites import (``ACTIVE``: a disabled site's
  one check; ``environment()`` for the workers it starts).
- payload faults: ``PAYLOAD_CATALOG`` of bad payloads, ``payloads()`` Hypothesis strategy;
  ``chaos.workload``: the one call a pool's task makes (``apply``), so that faults carried by a
  message (hang, leak, broken channel, bad result) act inside any pool.
- resource faults: ``leaking``, ``address_space_limit``, ``memory_cgroup``, ``pids_limit``,
  ``thread_stack_limit``, ``thread_limit``, ``hogging_threads``; broken pipes:
  ``break_socket``/``break_sockets``; ``cgroup_available``.
- stacks: ``dump_stacks(pid)`` with py-spy, or a stated fallback.
- targets: the ``Target`` protocol a scenario drives, ``SystemTarget``, ``load_target``;
  ``ServedTarget`` runs any target in a child process of its own session (whole-pool faults),
  ``TargetGone`` when that process died.
- scenarios: ``Scenario`` (the pytest plugin's ``chaos`` fixture): faults planned against fired,
  reverted at teardown, the verdict held against the SLO; ``Fault``.
- history: ``History`` of submits and its ``check`` of committed per-key lists -> ``Verdict``
  (lost, duplicated, reordered, unexpected, dead-lettered, with explanations from events).
"""

import importlib as _importlib
from typing import Any as _Any

_EXPORTS = {  # name -> (module, attribute): imported when first used (PEP 562), so that
    # the pytest plugin, loaded by every pytest run, costs next to nothing until needed
    "cgroup_available": ("._cgroups", "available"),
    "History": ("._checker", "History"),
    "Verdict": ("._checker", "Verdict"),
    "BlastRadiusError": ("._errors", "BlastRadiusError"),
    "ChaosError": ("._errors", "ChaosError"),
    "ContractError": ("._errors", "ContractError"),
    "FailpointError": ("._errors", "FailpointError"),
    "InjectorUnavailable": ("._errors", "InjectorUnavailable"),
    "clear_failpoints": (".failpoints", "clear"),
    "Guarded": ("._guard", "Guarded"),
    "TargetError": ("._guard", "TargetError"),
    "TargetHung": ("._guard", "TargetHung"),
    "failpoint": (".failpoints", "failpoint"),
    "failpoint_counts": (".failpoints", "counts"),
    "failpoint_log": (".failpoints", "log_path"),
    "format_plain": ("._tracebacks", "format_plain"),
    "set_failpoints": (".failpoints", "set_failpoints"),
    "address_space_limit": ("._memory", "address_space_limit"),
    "leaking": ("._memory", "leaking"),
    "memory_cgroup": ("._memory", "memory_cgroup"),
    "PAYLOAD_CATALOG": ("._payloads", "CATALOG"),
    "PayloadFault": ("._payloads", "PayloadFault"),
    "payloads": ("._payloads", "payloads"),
    "break_socket": ("._pipes", "break_socket"),
    "break_sockets": ("._pipes", "break_sockets"),
    "breakable_sockets": ("._pipes", "breakable_sockets"),
    "sockets_of": ("._pipes", "sockets_of"),
    "Injected": ("._process_faults", "Injected"),
    "check_target": ("._process_faults", "check_target"),
    "freeze": ("._process_faults", "freeze"),
    "frozen": ("._process_faults", "frozen"),
    "kill": ("._process_faults", "kill"),
    "pick": ("._process_faults", "pick"),
    "terminate": ("._process_faults", "terminate"),
    "thaw": ("._process_faults", "thaw"),
    "workers_of": ("._process_faults", "workers_of"),
    "descendants": ("._processes", "descendants"),
    "is_gone": ("._processes", "is_gone"),
    "wait_gone": ("._processes", "wait_gone"),
    "wait_until": ("._processes", "wait_until"),
    "Recovery": ("._recovery", "Recovery"),
    "recovery_of": ("._recovery", "recovery_of"),
    "Fault": ("._scenario", "Fault"),
    "Scenario": ("._scenario", "Scenario"),
    "WorkersNotReplaced": ("._scenario", "WorkersNotReplaced"),
    "StackDump": ("._stacks", "StackDump"),
    "dump_stacks": ("._stacks", "dump_stacks"),
    "ServedTarget": ("._served", "ServedTarget"),
    "TargetGone": ("._served", "TargetGone"),
    "SystemTarget": ("._target", "SystemTarget"),
    "Target": ("._target", "Target"),
    "load_target": ("._target", "load_target"),
    "submit_traffic": ("._target", "submit_traffic"),
    "hogging_threads": ("._threads", "hogging_threads"),
    "pids_limit": ("._threads", "pids_limit"),
    "thread_limit": ("._threads", "thread_limit"),
    "thread_stack_limit": ("._threads", "thread_stack_limit"),
}


__all__ = [
    "PAYLOAD_CATALOG",
    "BlastRadiusError",
    "ChaosError",
    "ContractError",
    "FailpointError",
    "Fault",
    "Guarded",
    "History",
    "Injected",
    "InjectorUnavailable",
    "PayloadFault",
    "Recovery",
    "Scenario",
    "ServedTarget",
    "StackDump",
    "SystemTarget",
    "Target",
    "TargetError",
    "TargetGone",
    "TargetHung",
    "Verdict",
    "WorkersNotReplaced",
    "address_space_limit",
    "break_socket",
    "break_sockets",
    "breakable_sockets",
    "cgroup_available",
    "check_target",
    "clear_failpoints",
    "descendants",
    "dump_stacks",
    "failpoint",
    "failpoint_counts",
    "failpoint_log",
    "format_plain",
    "freeze",
    "frozen",
    "hogging_threads",
    "is_gone",
    "kill",
    "leaking",
    "load_target",
    "memory_cgroup",
    "payloads",
    "pick",
    "pids_limit",
    "recovery_of",
    "set_failpoints",
    "sockets_of",
    "submit_traffic",
    "terminate",
    "thaw",
    "thread_limit",
    "thread_stack_limit",
    "wait_gone",
    "wait_until",
    "workers_of",
]


def __getattr__(name: str) -> _Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'chaos' has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
