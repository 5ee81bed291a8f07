"""Scenario: the whole bad-payload catalog, mixed into good traffic.

Each bad payload is either refused at submit (nothing written) or dead-lettered in the worker;
every good message around it is committed exactly once, in order.
"""

import pytest

from chaos import PAYLOAD_CATALOG
from chaos._payloads import DEAD_LETTERED, REFUSED
from chaos.pytest_plugin import require
from system import PayloadError


@pytest.mark.chaos_slo(lost=0, duplicated=0)
async def test_the_payload_catalog_is_refused_or_dead_lettered(chaos_target, history) -> None:
    target = await chaos_target(workers=2, mode="process")
    require(target, "dead_letters")
    expected_dead = []
    for round_ in range(3):
        for i, fault in enumerate(PAYLOAD_CATALOG):
            key = f"k{i}"
            good = f"good-{round_}-{i}"
            await target.submit(key, "ok", good)
            history.submitted(good, key)
            bad = f"bad-{round_}-{fault.name}"
            outcome = fault.outcome("process")
            if outcome == REFUSED:
                with pytest.raises(PayloadError, match="nothing was written"):
                    await target.submit(key, fault.make(), bad)
                history.submitted(bad, key, acked=False)
                continue
            await target.submit(key, fault.make(), bad)
            history.submitted(bad, key)
            if outcome == DEAD_LETTERED:
                expected_dead.append(bad)
    committed = await target.committed()
    verdict = history.check(committed, target.dead_lettered(), target.events())
    print(f"\n{verdict.summary()} submitted={verdict.submitted} committed={verdict.committed}")
    assert verdict.ok, verdict.details()
    assert sorted(target.dead_lettered()) == sorted(expected_dead)
