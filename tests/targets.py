"""Targets with planted bugs, for tests that must see chaosgate catch them (``--chaos-target
targets:LossyTarget`` with ``tests/`` on PYTHONPATH)."""

import asyncio

from chaos import SystemTarget


class LossyTarget(SystemTarget):
    """The system pool, reporting its state wrong: once any worker has been killed by a signal,
    the newest committed id of every key is missing."""

    async def committed(self):
        state = await super().committed()
        if any(e["kind"] == "died" and e.get("signal") for e in self.events()):
            state = {key: ids[:-1] for key, ids in state.items()}
        return state


class DuplicatingTarget(SystemTarget):
    """The system pool, reporting its state wrong in a way that depends on the input alone (so
    that every replay fails alike): a key's third message shows up twice. Its workers are
    threads, so that the many runs of shrinking start and stop fast."""

    def __init__(self, data_dir, **options):
        super().__init__(data_dir, **{**options, "mode": "thread"})

    async def committed(self):
        state = await super().committed()
        return {key: ids[:3] + ids[2:] for key, ids in state.items()}


class EarlyAckTarget(SystemTarget):
    """The system pool behind a write-behind buffer: ``submit`` acknowledges at once and hands
    the message to the pool 50 ms later, so a crash loses messages it acknowledged (a whole-pool
    SIGKILL must find them lost)."""

    async def start(self):
        self._behind = set()
        await super().start()

    async def submit(self, key, payload, id):
        task = asyncio.get_running_loop().create_task(self._later(key, payload, id))
        self._behind.add(task)
        task.add_done_callback(self._behind.discard)

    async def _later(self, key, payload, id):
        await asyncio.sleep(0.05)
        await super().submit(key, payload, id)

    async def committed(self):
        await asyncio.gather(*self._behind, return_exceptions=True)
        return await super().committed()

    async def stop(self):
        await asyncio.gather(*getattr(self, "_behind", ()), return_exceptions=True)
        await super().stop()


class HangingStopTarget(SystemTarget):
    """The system pool, whose ``stop()`` never returns."""

    async def stop(self):
        await asyncio.Event().wait()


class NoisyTarget(SystemTarget):
    """The system pool, printing a line to standard output for every message submitted."""

    async def submit(self, key, payload, id):
        print(f"submitting {id} to {key}", flush=True)
        await super().submit(key, payload, id)
