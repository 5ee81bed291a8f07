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
async def test_the_payload_catalog_is_refused_or_dead_lettered(chaos_target, chaos) -> None:
    target = await chaos_target(workers=2, mode="process")
    require(target, "dead_letters")
    expected_dead = []
    for round_ in range(3):
        for i, fault in enumerate(PAYLOAD_CATALOG):
            key = f"k{i}"
            good = f"good-{round_}-{i}"
            await target.submit(key, "ok", good)
            chaos.history.submitted(good, key)
            bad = f"bad-{round_}-{fault.name}"
            outcome = fault.outcome("process")
            planned = chaos.plan("payload", f"message {bad}", detail=f"{fault.name}: {outcome}")
            if outcome == REFUSED:
                with pytest.raises(PayloadError, match="nothing was written"):
                    await target.submit(key, fault.make(), bad)
                chaos.history.submitted(bad, key, acked=False)
            else:
                await target.submit(key, fault.make(), bad)
                chaos.history.submitted(bad, key)
                if outcome == DEAD_LETTERED:
                    expected_dead.append(bad)
            planned.fire()
    verdict = await chaos.verify()
    print(f"\n{verdict.summary()} submitted={verdict.submitted} committed={verdict.committed}")
    assert sorted(target.dead_lettered()) == sorted(expected_dead)
