"""The chaosgate pytest plugin (entry point ``pytest11``): seeds, targets, and post-mortems.

Cheap to load: it imports the toolkit only when a fixture or a failure needs it.

- Options ``--chaos-seed N`` (default: random, printed in the header, so any failure replays),
  ``--chaos-target package.module:factory`` (default: the ``system`` pool), ``--chaos-report
  DIR`` and ``--chaos-profile ci|soak`` (fault schedules); the same keys (``seed``, ``target``,
  ``report``, ``profile``) in ``[tool.chaosgate]`` of pyproject.toml. A bad value is refused
  with where it came from.
- Marker ``chaos_slo(recovery=seconds, lost=0, duplicated=0)``: a scenario's objectives.
- Fixtures ``chaos_seed`` (int), ``chaos`` (a ``chaos.Scenario``: the faults it injects,
  planned against fired, reverted at teardown; its verdict against the SLO), ``chaos_target``
  (a factory: ``await chaos_target()`` gives a started target in a fresh data dir, stopped at
  teardown), ``history`` (the scenario's ``chaos.History``).
- A scenario whose planned fault never fired fails, and so does one marked ``chaos_slo`` whose
  verdict was never checked.
- On any failure, the report gets a ``chaosgate`` section with the seed and a one-line command
  that replays the test. On a timeout (pytest-timeout) it also gets a py-spy dump of every
  descendant process of the test, after which the process tree is killed -- no orphans.
- The run's report (``--chaos-report``) and, with ``--chaos-gate``, its exit code; the gate line
  in the terminal shows the code the process exits with, and why when it is not the gate's.
- Under pytest-xdist (``-n N``) the gate gives what a serial run gives::

      controller --(seed, start time: pytest_configure_node)--> each worker
      worker: _record builds a scenario's entry --> report.chaos_entry (a teardown's update too)
      controller: pytest_runtest_logreport keeps it --> pytest_sessionfinish: report, gate

  Only the controller writes the report; a worker that dies in a scenario errs it, and a
  worker's bad configuration ends the run as it would end a serial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

SETTINGS = ("seed", "target", "report", "profile", "baseline", "gate", "target_timeout")
PROFILES = ("ci", "soak")


class ChaosConfigError(pytest.UsageError):  # type: ignore[misc]  # pytest marks it @final
    """A chaosgate setting is bad; the message says where it came from."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaosgate", "chaosgate: fault injection scenarios")
    group.addoption("--chaos-seed", default=None, help="seed of every random choice (replays)")
    group.addoption(
        "--chaos-target",
        default=None,
        help="package.module:factory of the pool to test (default: system)",
    )
    group.addoption(
        "--chaos-report",
        default=None,
        help="directory for the run's report (default: reports/ under the rootdir)",
    )
    group.addoption(
        "--chaos-gate",
        action="store_true",
        default=None,
        help="fail the run (exit 10) on any weakness: SLO breached, loss, hang, regression; "
        "11 on a harness or environment error, 12 on bad configuration",
    )
    group.addoption(
        "--chaos-baseline",
        default=None,
        help="a previous report.json: the gate fails when recovery regresses past it",
    )
    group.addoption(
        "--chaos-target-timeout",
        default=None,
        help="seconds any one call into the target may take before the scenario fails as "
        "hung, with stack dumps (default 30)",
    )
    group.addoption(
        "--chaos-profile",
        default=None,
        help="fault schedules: ci (a few short ones, the default) or soak (many long ones)",
    )


def _pyproject_settings(rootpath: Path) -> dict[str, Any]:
    path = rootpath / "pyproject.toml"
    if not path.exists():
        return {}
    import tomllib

    with open(path, "rb") as f:
        section = tomllib.load(f).get("tool", {}).get("chaosgate", {})
    unknown = set(section) - set(SETTINGS)
    if unknown:
        raise ChaosConfigError(
            f"unknown setting(s) {', '.join(sorted(unknown))} in [tool.chaosgate] of {path}; "
            f"known: {', '.join(SETTINGS)}"
        )
    return section


def resolve_settings(config: pytest.Config) -> dict[str, Any]:
    """Settings from the command line, else [tool.chaosgate], else defaults; each validated."""
    file = _pyproject_settings(config.rootpath)
    chosen: dict[str, Any] = {}
    for key in SETTINGS:
        cli = config.getoption(f"chaos_{key}")
        if cli is not None:
            chosen[key], where = cli, f"--chaos-{key}"
        elif key in file:
            chosen[key], where = file[key], f"[tool.chaosgate] {key} in pyproject.toml"
        else:
            chosen[key], where = None, "default"
        if key == "seed":
            if chosen[key] is None:
                chosen[key] = random.SystemRandom().randrange(2**32)
            else:
                try:
                    chosen[key] = int(chosen[key])
                except (TypeError, ValueError):
                    raise ChaosConfigError(
                        f"bad seed {chosen[key]!r} (from {where}): give a whole number"
                    ) from None
        elif key == "target" and chosen[key] is not None and ":" not in str(chosen[key]):
            raise ChaosConfigError(
                f"bad target {chosen[key]!r} (from {where}): expected 'package.module:factory'"
            )
        elif key == "target_timeout":
            from chaos._guard import DEFAULT_TIMEOUT

            raw = chosen[key]
            try:
                chosen[key] = DEFAULT_TIMEOUT if raw is None else float(raw)
            except (TypeError, ValueError):
                chosen[key] = -1.0
            if not 0 < chosen[key] < float("inf"):
                raise ChaosConfigError(
                    f"bad target_timeout {raw!r} (from {where}): give the seconds any one call "
                    "into the target may take, a number > 0 (e.g. 30)"
                )
        elif key == "profile":
            chosen[key] = chosen[key] or "ci"
            if chosen[key] not in PROFILES:
                raise ChaosConfigError(
                    f"bad profile {chosen[key]!r} (from {where}): choose {' or '.join(PROFILES)}"
                )
        elif key == "report":
            chosen[key] = Path(chosen[key] or "reports")
            if not chosen[key].is_absolute():  # like --junitxml: from where pytest was run
                chosen[key] = config.invocation_params.dir / chosen[key]
            if chosen[key].is_file():
                raise ChaosConfigError(
                    f"bad report directory {str(chosen[key])!r} (from {where}): it is a file"
                )
        elif key == "baseline":
            chosen["baseline_report"] = None
            if chosen[key] is not None:
                from chaos._report import ReportError, load

                try:
                    chosen["baseline_report"] = load(chosen[key])
                except ReportError as e:
                    raise ChaosConfigError(f"bad baseline (from {where}): {e}") from None
                chosen[key] = str(chosen[key])
        elif key == "gate":
            if where.startswith("--"):  # the flag: thresholds come from [tool.chaosgate.gate]
                chosen[key], where = file.get("gate"), "[tool.chaosgate.gate] in pyproject.toml"
            from chaos._gate import GateConfigError, settings

            try:
                chosen["gate_settings"] = settings(chosen[key], where)
            except GateConfigError as e:
                raise ChaosConfigError(str(e)) from None
            chosen[key] = cli is not None
    return chosen


# Warnings a pool under test issues from its own threads stay warnings, whatever the project's
# filters say: raised as errors there ("filterwarnings = error"), they kill the pool's thread,
# and the verdict would be on the harness's doing. loky (also as joblib's) warns so when it
# restarts a worker that leaks, or replaces one that stopped: as an error, its executor lost
# the work in flight (4 of 6 runs of a leaking-worker scenario).
POOL_WARNINGS = [
    rf"default:{message}:UserWarning:(joblib\.externals\.)?loky\.process_executor"
    for message in ("A worker was restarted", "A worker stopped while some jobs")
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos_slo(lost=0, duplicated=0, reordered=0, unexpected=0, detection=s, restart=s, "
        "recovery=s, mode=name): the objectives a chaos scenario asserts",
    )
    config.addinivalue_line(  # the shipped scenarios use it, whatever the project declares
        "markers", "slow: integration tests that run real worker processes for several seconds"
    )
    config.addinivalue_line(
        "markers",
        "chaos_system_pool(what, elsewhere): a scenario of the system pool's own mechanism (a "
        "failpoint site inside it, a mode, its fallback ladder); against another target it is "
        "skipped before anything starts, saying where that fault family runs against it",
    )
    for line in POOL_WARNINGS:  # after the project's own filters: these win
        config.addinivalue_line("filterwarnings", line)
    try:
        config.stash[_SETTINGS] = resolve_settings(config)
    except ChaosConfigError as e:
        _config_error(config, e)
    from chaos._tracebacks import carets_in_main_thread_only

    carets_in_main_thread_only()  # CPython 3.11: ast in two threads at once corrupts it
    from chaos.workload import ENV_HARNESS

    os.environ[ENV_HARNESS] = str(os.getpid())  # workload faults never hurt this process
    config.stash[_ENTRIES] = {}
    config.stash[_STARTED] = time.time()
    sent = getattr(config, "workerinput", {})  # an xdist worker: the controller's choices
    if "chaosgate_seed" in sent:
        config.stash[_SETTINGS]["seed"] = sent["chaosgate_seed"]
        config.stash[_STARTED] = sent["chaosgate_started"]
    if config.pluginmanager.hasplugin("xdist"):  # pytest refuses its hooks without it
        config.pluginmanager.register(XdistHooks(config), "chaosgate-xdist")


_SETTINGS = pytest.StashKey[dict[str, Any]]()
_ENTRIES = pytest.StashKey[dict[str, dict[str, Any]]]()
_STARTED = pytest.StashKey[float]()
_REPORT = pytest.StashKey[dict[str, Any]]()
_ORDER = pytest.StashKey[dict[str, int]]()  # xdist: nodeid -> its place in the collection
_SESSION = pytest.StashKey[pytest.Session]()


class XdistHooks:
    """pytest-xdist's hooks, registered only when it is installed.

    The controller sends its seed and start time to each worker and keeps the scenarios'
    entries that come back on the workers' test reports, in the collection's order (as a serial
    run lists them). A worker that dies in a scenario errs that scenario (a serial run would
    have died with it); a worker's bad configuration ends the run as it ends a serial one."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started: set[str] = set()  # scenarios past their setup

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["chaosgate_seed"] = self.config.stash[_SETTINGS]["seed"]
        node.workerinput["chaosgate_started"] = self.config.stash[_STARTED]

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if _ORDER not in self.config.stash:  # every worker collects the same items
            self.config.stash[_ORDER] = {nodeid: i for i, nodeid in enumerate(ids)}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = getattr(report, "chaos_entry", None)  # in a serial run: already kept
        if entry is not None:
            self.config.stash[_ENTRIES][report.nodeid] = entry
        elif getattr(report, "chaos_scenario", False):
            self.started.add(report.nodeid)

    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport) -> None:
        if crashitem in self.started:
            _worker_crashed(self.config, crashitem, str(report.longrepr))

    def pytest_testnodedown(self, node: Any) -> None:
        error = getattr(node, "workeroutput", {}).get("chaosgate_config_error")
        if error:
            _config_error(self.config, ChaosConfigError(error))


def _worker_crashed(config: pytest.Config, nodeid: str, why: str) -> None:
    """The scenario ``nodeid`` whose xdist worker died under it: an error (the harness's)."""
    from chaos._report import scenario_entry

    entries = config.stash[_ENTRIES]
    entry = entries.get(nodeid)
    if entry is None:
        replay = _replay_command(config, nodeid)
        entries[nodeid] = scenario_entry(
            nodeid, "error", 0.0, None, failure=why, failure_kind="error", replay=replay
        )
    elif entry["outcome"] in ("failed", "error"):  # its own failure first, then the crash
        entry["failure"] = f"{entry['failure']}\n{why}"
    else:  # it died in its teardown
        entry.update(outcome="error", failure_kind="error", failure=why)


def chosen_target(config: pytest.Config) -> str | None:
    """The target spec the run was given (--chaos-target or [tool.chaosgate]), if any."""
    return config.stash[_SETTINGS]["target"]


def is_system_pool(spec: str | None) -> bool:
    """Whether ``spec`` (a run's target; None: the default) is chaosgate's own pool -- or a
    subclass of its target, which has every site, mode and ladder of it (a planted bug, say)."""
    if spec is None:
        return True
    from chaos._target import SystemTarget, load_target

    factory = load_target(spec)
    return isinstance(factory, type) and issubclass(factory, SystemTarget)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A scenario of the system pool's own mechanism, against another target: skipped at once
    (nothing started), with where its fault family runs against that target instead."""
    mark = item.get_closest_marker("chaos_system_pool")
    if mark is None or is_system_pool(chosen_target(item.config)):
        return
    what, elsewhere = (*mark.args, "", "")[:2]
    elsewhere = mark.kwargs.get("elsewhere", elsewhere)
    pytest.skip(
        f"the system pool's own {what}, not {chosen_target(item.config)}'s"
        + (f"; against it, {elsewhere}" if elsewhere else "")
    )


def pytest_report_header(config: pytest.Config) -> str:
    s = config.stash[_SETTINGS]
    return (
        f"chaosgate: seed {s['seed']} (replay with --chaos-seed {s['seed']}), "
        f"target {s['target'] or 'system (default)'}, profile {s['profile']}"
    )


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """The run's seed: use it for every random choice a scenario makes."""
    return int(request.config.stash[_SETTINGS]["seed"])


@pytest.fixture
def history(chaos: Any) -> Any:
    """The scenario's ``chaos.History`` of submits (the same as ``chaos.history``)."""
    return chaos.history


@pytest.fixture
def chaos(request: pytest.FixtureRequest, chaos_seed: int) -> Iterator[Any]:
    """The scenario's faults and verdict (``chaos.Scenario``): ``chaos.kill(pid)``,
    ``chaos.freeze(pid)``, ``chaos.break_pipes(pid)``, ``chaos.failpoints(spec)``,
    ``chaos.limit(kind, manager)``, ``chaos.plan(...)``; ``await chaos.verify()`` against the
    ``chaos_slo`` marker. Reverted at teardown; a planned fault that never fired fails the test."""
    from chaos._scenario import Scenario, slo_of

    marker = request.node.get_closest_marker("chaos_slo")
    try:
        slo = slo_of(marker.kwargs if marker else {}, request.node.nodeid)
    except Exception as e:
        raise ChaosConfigError(str(e)) from None
    scenario = Scenario(request.node.nodeid, chaos_seed, slo)
    scenario.target_timeout = request.config.stash[_SETTINGS]["target_timeout"]
    request.node.stash[SCENARIO] = scenario
    yield scenario
    scenario.close()


@pytest.fixture
def chaos_profile(request: pytest.FixtureRequest) -> str:
    """The fault-schedule profile: "ci" or "soak"."""
    return str(request.config.stash[_SETTINGS]["profile"])


@pytest.fixture
def chaos_target_factory(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """The target factory, ``factory(data_dir, **options)``, unstarted: ``--chaos-target`` or
    ``system``'s."""
    from chaos import SystemTarget, load_target

    spec = request.config.stash[_SETTINGS]["target"]
    return load_target(spec) if spec else SystemTarget


@pytest_asyncio.fixture
async def chaos_target(
    tmp_path: Path, chaos: Any, chaos_target_factory: Callable[..., Any]
) -> AsyncIterator[Callable[..., Any]]:
    """``await chaos_target(**options)``: a started target in a fresh data dir, the one
    ``chaos`` faults and verifies, every call into it bounded by ``target_timeout`` (a call past
    it fails the scenario as hung, with stack dumps, and the target's processes are killed: see
    ``chaos._guard``). At teardown the faults are undone first (a frozen worker thawed,
    failpoints cleared), then every target is stopped, each on its own and within the same
    bound; then any process of the targets still alive is a leak: reported by pid and command
    line, killed, and the scenario fails as a weakness (``TargetLeak``)."""
    from chaos._guard import interruptible, made_by, stop_all
    from chaos._leaks import Leftovers

    factory = chaos_target_factory
    started: list[Any] = []
    leftovers = Leftovers.now()

    async def make(**options: Any) -> Any:
        made = made_by(factory, tmp_path / f"target-{len(started)}", **options)
        target = chaos.guard(made, leftovers)
        started.append(target)  # before start: a start that fails half-way is stopped too
        await target.start()
        chaos.target = target
        return target

    with interruptible():  # a call that blocks this thread past its bound is interrupted
        yield make
        for target in started:  # the workers of the moment, replacements included
            with contextlib.suppress(Exception):
                leftovers.saw(target.worker_pids())
        leftovers.saw(chaos.seen_pids)
        chaos.close()
        failed: Exception | None = None
        try:
            await stop_all(started)
        except Exception as e:  # raised once the leaks are reaped
            failed = e
    leak = leftovers.reap()  # after every stop: what is still running is a leak
    if failed is not None:
        raise failed
    if leak is not None:
        raise leak


SCENARIO = pytest.StashKey[Any]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A bad ``chaos_slo`` is a configuration error of the run, found before anything runs."""
    from chaos._scenario import slo_of

    for item in items:
        marker = item.get_closest_marker("chaos_slo")
        if marker is not None:
            try:
                slo_of(marker.kwargs, item.nodeid)
            except Exception as e:
                _config_error(config, ChaosConfigError(str(e)))


def _config_error(config: pytest.Config, error: ChaosConfigError) -> None:
    """Exit 12 under the gate (its code for bad configuration), else pytest's usage error. An
    xdist worker also leaves the error for the controller, which ends the run the same way."""
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["chaosgate_config_error"] = str(error)
    if config.getoption("chaos_gate"):
        from chaos._gate import EXIT_CONFIG

        if workeroutput is None:  # the controller says it once, not each worker
            sys.stderr.write(f"ERROR: {error}\n")
        pytest.exit(f"chaosgate: bad configuration: {error}", returncode=EXIT_CONFIG)
    raise error


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """After a scenario's body passed: fail it if a planned fault never fired, or if it is
    marked ``chaos_slo`` and never had its verdict checked against it."""
    result = yield
    scenario = item.stash.get(SCENARIO, None)
    if scenario is not None:
        from chaos._scenario import unfired_message

        unfired = scenario.unfired()
        if unfired:
            pytest.fail(unfired_message(unfired), pytrace=False)
        ineffective = scenario.ineffective()
        if ineffective:
            pytest.fail(
                "a fault had no effect, so the scenario proves nothing: " + "; ".join(ineffective),
                pytrace=False,
            )
        if item.get_closest_marker("chaos_slo") and not scenario.checked:
            pytest.fail(
                "marked chaos_slo but never checked: call `await chaos.verify()` (or "
                "`chaos.judge(verdict, events)`) before the scenario ends",
                pytrace=False,
            )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    post_mortem = None
    if report.failed:
        from chaos._report import post_mortem_dump

        lines = [f"seed: {item.config.stash[_SETTINGS]['seed']}", f"replay: {_replay(item)}"]
        if _timed_out(call):
            text = "\n".join(_post_mortem())
            lines.append(text)
            why = "the test timed out: every process it started, dumped then killed"
            post_mortem = post_mortem_dump(text, why)
        elif (hung := _hung(item) or _raised_hung(call)) is not None and hung.dumps:
            if not item.stash.get(_DUMPED, False):  # printed once (call, then teardown)
                lines.append(hung.dumps)
                item.stash[_DUMPED] = True
            post_mortem = post_mortem_dump(hung.dumps, str(hung))
        report.sections.append(("chaosgate", "\n".join(lines)))
    if "chaos" in getattr(item, "fixturenames", ()):
        _record(item, call, report, post_mortem)
    return report


_DUMPED = pytest.StashKey[bool]()


def _replay(item: pytest.Item) -> str:
    return _replay_command(item.config, item.nodeid)


def _replay_command(config: pytest.Config, nodeid: str) -> str:
    s = config.stash[_SETTINGS]
    target = f" --chaos-target {shlex.quote(s['target'])}" if s["target"] else ""
    return (
        f"{shlex.quote(sys.executable)} -m pytest {shlex.quote(nodeid)} "
        f"--chaos-seed {s['seed']}{target}"
    )


def _record(
    item: pytest.Item,
    call: pytest.CallInfo[None],
    report: pytest.TestReport,
    dumps: dict[str, Any] | None,
) -> None:
    """Keep the scenario's entry for the run's report (and its figures for JUnit XML), and put
    it on the test report too: an xdist worker's reports take it to the controller."""
    from chaos._report import scenario_entry

    entries = item.config.stash[_ENTRIES]
    known = entries.get(item.nodeid)
    if report.when == "setup" and report.passed:
        # under xdist: if its worker dies now, the scenario errs
        _extra(report, "chaos_scenario", True)
        return
    if report.when == "teardown":
        if report.failed and known is not None and known["outcome"] != "failed":
            teardown_kind = _teardown_kind(call)
            known["outcome"] = "failed" if teardown_kind != "error" else "error"
            known["failure_kind"] = teardown_kind
            known["failure"] = report.longreprtext[-8000:]
            _extra(report, "chaos_entry", known)
        if report.failed and known is not None and dumps is not None:  # e.g. stop() hung
            if all(d["text"] != dumps["text"] for d in known["dumps"]):
                known["dumps"].append(dumps)
                _extra(report, "chaos_entry", known)
        return
    scenario = item.stash.get(SCENARIO, None)
    record = scenario.record() if scenario is not None else None
    outcome: str = (
        report.outcome if report.when == "call" else ("error" if report.failed else "skipped")
    )
    skip_reason = None
    if hasattr(report, "wasxfail"):  # an expected weakness, seen (or, xpassed, not seen)
        outcome = "xfailed" if report.skipped else "xpassed"
        skip_reason = report.wasxfail
    elif report.skipped and isinstance(report.longrepr, tuple):
        skip_reason = str(report.longrepr[2]).removeprefix("Skipped: ")
    failure = report.longreprtext[-8000:] if report.failed else None
    kind = _failure_kind(call, scenario) if report.failed else None
    hung = getattr(scenario, "hung", None)
    if failure is not None and kind == "hung" and hung is not None and str(hung) not in failure:
        # The hang is the cause, whatever the test then failed on (a guard that killed a hung
        # target leaves the test to trip on what the kill did): it leads the failure.
        lead = f"{hung}\n\n(and then the test failed:)\n"
        failure = lead + failure[-max(0, 8000 - len(lead)) :]
    entry = scenario_entry(
        item.nodeid,
        outcome,
        report.duration,
        record,
        failure=failure,
        failure_kind=kind,
        skip_reason=skip_reason,
        replay=_replay(item),
        post_mortem=dumps,
    )
    entry = json.loads(json.dumps(entry, default=repr))  # plain data, as xdist can send it
    entries[item.nodeid] = entry
    _extra(report, "chaos_entry", entry)
    if report.when == "call":
        checker = entry["checker"] or {}
        for name, value in entry["figures"].items():
            item.user_properties.append((name, value))
        for anomaly in ("lost", "duplicated", "reordered", "unexpected", "dead_lettered"):
            if anomaly in checker:
                item.user_properties.append((anomaly, len(checker[anomaly])))
        item.user_properties.append(("seed", item.config.stash[_SETTINGS]["seed"]))


def _extra(report: pytest.TestReport, name: str, value: Any) -> None:
    """Put ``name`` on the test report: pytest keeps a report's extra attributes (and xdist
    sends them to the controller), though its type declares none."""
    setattr(report, name, value)


def _teardown_kind(call: pytest.CallInfo[None]) -> str:
    """A teardown failure that is the target's doing (a leak, a stop that hung or raised) is a
    weakness; a broken adapter contract is named; any other is an error."""
    from chaos._errors import ContractError
    from chaos._guard import TargetError
    from chaos._leaks import TargetHung, TargetLeak

    error = call.excinfo.value if call.excinfo is not None else None
    kinds = ((TargetLeak, "leak"), (TargetHung, "hung"), (TargetError, "target_error"))
    for kind, name in (*kinds, (ContractError, "contract")):
        if isinstance(error, kind):
            return name
    return "error"


def _hung(item: pytest.Item) -> Any:
    """The scenario's target hang (``chaos._guard.TargetHung``), if a call into it hung."""
    scenario = item.stash.get(SCENARIO, None)
    return getattr(scenario, "hung", None)


def _raised_hung(call: pytest.CallInfo[None]) -> Any:
    """A ``TargetHung`` the scenario itself raised (a served target that did not exit in time),
    with the stacks gathered at its deadline."""
    from chaos._guard import TargetHung

    error = call.excinfo.value if call.excinfo is not None else None
    return error if isinstance(error, TargetHung) else None


def _failure_kind(call: pytest.CallInfo[None], scenario: Any) -> str:
    from chaos._errors import ContractError
    from chaos._guard import TargetError, TargetHung, describe
    from chaos._scenario import WorkersNotReplaced

    if call.when != "call" or call.excinfo is None:
        return "error"
    error = call.excinfo.value
    text = describe(error)
    if "[XPASS(strict)]" in text:
        return "xpass"
    if _timed_out(call):
        return "timeout"
    if getattr(scenario, "hung", None) is not None:  # whatever it led to, the cause is the hang
        return "hung"
    found = [error]  # and, in a group (e.g. Hypothesis's FlakyFailure), each of its own
    found += list(error.exceptions) if isinstance(error, BaseExceptionGroup) else []
    if any(isinstance(e, TargetHung) for e in found):  # e.g. a schedule step past its bound
        return "hung"
    if "planned fault(s) never fired" in text:
        return "unfired"
    if "had no effect, so the scenario proves nothing" in text:
        return "no_effect"
    if any(isinstance(e, ContractError) for e in found):
        return "contract"
    if any(isinstance(e, WorkersNotReplaced) for e in found):
        return "not_replaced"
    if any(isinstance(e, TargetError) or isinstance(e.__cause__, TargetError) for e in found):
        return "target_error"
    if any(isinstance(e, AssertionError) for e in found):
        return "breach" if scenario is not None and scenario.breaches else "assertion"
    return "error"


def _timed_out(call: pytest.CallInfo[None]) -> bool:
    """pytest-timeout's own failure ("Timeout >300.0s"), not any error mentioning timeouts."""
    return call.excinfo is not None and "from pytest-timeout" in str(call.excinfo.value)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the run's report (if any scenario ran) and, with ``--chaos-gate``, apply the gate:
    its exit code becomes the run's."""
    config = session.config
    entries = config.stash.get(_ENTRIES, None)
    if entries is None or hasattr(config, "workerinput"):  # workers: the controller reports
        return
    if config.option.collectonly:  # nothing ran: no report, no verdict
        return
    if not entries and not config.stash[_SETTINGS]["gate"]:
        return
    from chaos._gate import evaluate
    from chaos._report import build, run_metadata, write

    s = config.stash[_SETTINGS]
    run = run_metadata(
        seed=s["seed"], target=s["target"], profile=s["profile"], started=config.stash[_STARTED]
    )
    order = config.stash.get(_ORDER, {})  # xdist's: list the scenarios as a serial run does
    report = build(run, sorted(entries.values(), key=lambda e: order.get(e["nodeid"], len(order))))
    if s["gate"]:
        gate = evaluate(report, s["gate_settings"], s["baseline_report"], s["baseline"])
        report["run"]["gate"] = gate.as_dict()
        # The gate's verdict, unless pytest's own is worse (a plain test failed: keep its 1).
        status = session.exitstatus
        if status in (0, pytest.ExitCode.NO_TESTS_COLLECTED) or (status == 1 and gate.exit_code):
            session.exitstatus = gate.exit_code
    report["run"]["exit_status"] = int(session.exitstatus)
    config.stash[_REPORT] = report
    config.stash[_SESSION] = session  # its exit status, as the terminal summary shows it
    try:
        config.stash[_REPORT_DIR] = write(report, s["report"])
    except Exception as e:  # a report that cannot be written must not hide the run's verdict
        config.stash[_REPORT_ERROR] = f"{type(e).__name__}: {e}"
        if s["gate"] and session.exitstatus == 0:
            from chaos._gate import EXIT_HARNESS

            session.exitstatus = EXIT_HARNESS


_REPORT_ERROR = pytest.StashKey[str]()
_REPORT_DIR = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None:
        return
    from chaos._gate import EXIT_HARNESS, table

    tr = terminalreporter
    tr.section("chaosgate")
    for line in table(report):
        tr.write_line(line)
    gate = report["run"]["gate"]
    error = config.stash.get(_REPORT_ERROR, None)
    if gate:
        code = _exit_code(tr, config)
        why = REPORT_NOT_WRITTEN if error and code == EXIT_HARNESS else EXIT_REASONS.get(code)
        tr.write_line("")
        tr.write_line(
            gate_line(gate["verdict"], gate["exit_code"], code, why),
            green=code == 0,
            red=code != 0,
            bold=True,
        )
        for f in gate["findings"]:
            where = (f["scenario"] or "the run").rsplit("::", 1)[-1]
            tr.write_line(f"  {f['kind']} [{f['category']}]: {where}: {f['text']}")
        if gate["skipped"]:
            tr.write_line(f"skipped: {len(gate['skipped'])} scenario(s), not judged:")
            for s in gate["skipped"]:
                tr.write_line(f"  {s['scenario'].rsplit('::', 1)[-1]}: {s['reason']}")
    if error:
        tr.write_line(f"report: NOT WRITTEN: {error}", red=True, bold=True)
    else:
        where = config.stash[_REPORT_DIR]
        tr.write_line(f"report: {where / 'report.html'} (also report.json, report.md)")


REPORT_NOT_WRITTEN = "the report could not be written"
EXIT_REASONS = {  # why a run under the gate exits with another code than the gate's
    1: "a test the gate does not judge failed (pytest's exit 1)",
    2: "the run was interrupted (pytest's exit 2)",
    3: "pytest had an internal error (exit 3)",
    4: "pytest was used wrongly (exit 4)",
    6: "more warnings than --max-warnings allows (pytest's exit 6)",
}


def gate_line(verdict: str, gate_code: int, exit_code: int, why: str | None = None) -> str:
    """The gate's verdict and the code the process exits with; why, when not the gate's own."""
    if exit_code == gate_code:
        return f"gate: {verdict.upper()} (exit {exit_code})"
    return f"gate: {verdict.upper()}, but exit {exit_code}: {why or 'set by another plugin'}"


def _exit_code(terminalreporter: Any, config: pytest.Config) -> int:
    """The code the process will exit with: the session's, unless pytest is about to fail a
    passing run for its warnings (``--max-warnings``, pytest 9)."""
    code = int(config.stash[_SESSION].exitstatus)
    limit = getattr(config.option, "max_warnings", None)
    if limit is None:
        try:
            limit = config.getini("max_warnings")
        except ValueError:  # a pytest without the setting
            return code
    warnings = len(terminalreporter.stats.get("warnings", []))
    if code == 0 and limit not in (None, "") and warnings > int(limit):
        return int(pytest.ExitCode.MAX_WARNINGS_ERROR)
    return code


def _post_mortem() -> list[str]:
    """py-spy dumps of every descendant of this process, then the tree killed."""
    from chaos import descendants, dump_stacks, wait_gone

    lines: list[str] = []
    procs = descendants(os.getpid())
    for proc in procs:
        dump = dump_stacks(proc.pid, timeout=5.0)
        lines += [f"--- pid {proc.pid} ({dump.method}) ---", dump.text]
    for proc in procs:
        try:
            proc.kill()
        except Exception:
            pass
    left = wait_gone({p.pid for p in procs}, 5.0)
    lines.append(f"killed {len(procs)} descendant process(es); still there: {sorted(left)}")
    return lines


def require(target: Any, *capabilities: str) -> None:
    """Skip the calling scenario, with the reason, if ``target`` lacks a capability it needs."""
    from chaos._guard import target_name

    missing = [c for c in capabilities if c not in getattr(target, "capabilities", ())]
    if missing:
        pytest.skip(
            f"target {target_name(target)} lacks {', '.join(missing)} (it offers "
            f"{', '.join(sorted(getattr(target, 'capabilities', ()))) or 'none'})"
        )
