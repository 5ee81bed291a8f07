"""``chaos``: real faults for real processes, the scenario checker, and the pytest plugin.

- process faults: ``kill``, ``terminate``, ``freeze``/``thaw``/``frozen`` behind a blast-radius
  guard (``check_target``); pickers ``workers_of`` and ``pick``.
- failpoints: ``failpoint(name)`` sites configured with ``set_failpoints`` or the environment
  variable ``CHAOSGATE_FAILPOINTS`` (fail-rs grammar); ``failpoint_counts`` of hits and firings.
- payload faults: ``PAYLOAD_CATALOG`` of bad payloads, ``payloads()`` Hypothesis strategy.
- resource faults: ``leaking``, ``address_space_limit``, ``memory_cgroup``, ``pids_limit``,
  ``thread_stack_limit``, ``thread_limit``, ``hogging_threads``; broken pipes:
  ``break_socket``/``break_sockets``; ``cgroup_available``.
- stacks: ``dump_stacks(pid)`` with py-spy, or a stated fallback.
- targets: the ``Target`` protocol a scenario drives, ``SystemTarget``, ``load_target``.
- scenarios: ``Scenario`` (the pytest plugin's ``chaos`` fixture): faults planned against fired,
  reverted at teardown, the verdict held against the SLO; ``Fault``.
- history: ``History`` of submits and its ``check`` of committed per-key lists -> ``Verdict``
  (lost, duplicated, reordered, unexpected, dead-lettered, with explanations from events).
"""

from ._cgroups import available as cgroup_available
from ._checker import History, Verdict
from ._errors import BlastRadiusError, ChaosError, FailpointError, InjectorUnavailable
from ._failpoints import clear as clear_failpoints
from ._failpoints import counts as failpoint_counts
from ._failpoints import failpoint, set_failpoints
from ._failpoints import log_path as failpoint_log
from ._memory import address_space_limit, leaking, memory_cgroup
from ._payloads import CATALOG as PAYLOAD_CATALOG
from ._payloads import PayloadFault, payloads
from ._pipes import break_socket, break_sockets, breakable_sockets, sockets_of
from ._process_faults import (
    Injected,
    check_target,
    freeze,
    frozen,
    kill,
    pick,
    terminate,
    thaw,
    workers_of,
)
from ._processes import descendants, is_gone, wait_gone, wait_until
from ._recovery import Recovery, recovery_of
from ._scenario import Fault, Scenario
from ._stacks import StackDump, dump_stacks
from ._target import SystemTarget, Target, load_target, submit_traffic
from ._threads import hogging_threads, pids_limit, thread_limit, thread_stack_limit

__all__ = [
    "PAYLOAD_CATALOG",
    "BlastRadiusError",
    "ChaosError",
    "FailpointError",
    "Fault",
    "History",
    "Injected",
    "InjectorUnavailable",
    "PayloadFault",
    "Recovery",
    "Scenario",
    "StackDump",
    "SystemTarget",
    "Target",
    "Verdict",
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
