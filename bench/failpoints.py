"""What a failpoint site costs: disabled (the guard sites use), disabled (a bare call), enabled.

Measured side by side in one run, with ``timeit`` (best of 7), as nanoseconds per site passed and
as a ratio to an empty loop body:

    python bench/failpoints.py
"""

from __future__ import annotations

import timeit

SETUP = "from chaos import failpoints; from chaos.failpoints import failpoint; x = 0"
CASES = {
    "empty loop body (reference)": "x",
    "disabled, guarded: `if failpoints.ACTIVE: failpoint(...)`": (
        "if failpoints.ACTIVE: failpoint('worker.before_apply')"
    ),
    "disabled, bare call: `failpoint(...)`": "failpoint('worker.before_apply')",
    "enabled elsewhere, this site off: `failpoint(...)`": ("failpoint('worker.before_apply')"),
    "enabled here, 0% probability": "failpoint('worker.before_apply')",
}
CONFIG = {
    "enabled elsewhere, this site off: `failpoint(...)`": "other.site=return(1)",
    "enabled here, 0% probability": "worker.before_apply=0%return(1)",
}


def main() -> None:
    from chaos import failpoints

    results = {}
    for name, stmt in CASES.items():
        failpoints.set_failpoints(CONFIG.get(name, ""), replace=True)
        # A configured site updates the run-wide counters (a locked file): far fewer calls.
        n = 2_000 if name in CONFIG and "here" in name else 1_000_000
        best = min(timeit.repeat(stmt, SETUP, number=n, repeat=7))
        results[name] = best / n * 1e9
    failpoints.clear()
    base = results["empty loop body (reference)"]
    print(f"{'site':62} {'ns/call':>9} {'vs empty':>9}")
    for name, ns in results.items():
        print(f"{name:62} {ns:9.1f} {ns / base:8.1f}x")


if __name__ == "__main__":
    main()
