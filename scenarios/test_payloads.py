"""Scenario: the whole bad-payload catalog, mixed into good traffic.

The contract, for any pool: each bad payload is refused at submit (the submit raises: nothing
acknowledged), or acknowledged and then committed, or -- for a target that reports dead letters
-- dead-lettered with a reason. Acknowledged and then neither is a loss; a pool that stops
taking work is broken. Every good message around the bad ones is committed exactly once, in
order. Which of the allowed outcomes a pool chooses is its business: no error text of this
project is expected, and the verdict does not depend on test order (a class that only exists in
the submitting process may well be importable in a worker forked after it was made).
"""

import pytest

from chaos import PAYLOAD_CATALOG

pytestmark = pytest.mark.asyncio  # async tests run whatever the project's asyncio_mode


@pytest.mark.chaos_slo(lost=0, duplicated=0)
async def test_the_payload_catalog_is_refused_committed_or_dead_lettered(
    chaos_target, chaos
) -> None:
    target = await chaos_target(workers=2, mode="process")
    refused, accepted = [], []
    for round_ in range(3):
        for i, fault in enumerate(PAYLOAD_CATALOG):
            key = f"k{i}"
            good = f"good-{round_}-{i}"
            await chaos.submit(good, "ok", key)
            bad = f"bad-{round_}-{fault.name}"
            ok = await chaos.submit_bad(target, key, fault.make(), bad, fault.name)
            (accepted if ok else refused).append(bad)
    if "dead_letters" in target.capabilities:
        chaos.expect_dead_letters(accepted)  # any reason: the pool's own words
    verdict = await chaos.verify()
    print(
        f"\n{verdict.summary()} submitted={verdict.submitted} committed={verdict.committed} "
        f"refused={len(refused)} dead-lettered={len(verdict.expected_dead)}"
    )
    assert refused or accepted
