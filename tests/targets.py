"""Targets with planted bugs, for tests that must see chaosgate catch them (``--chaos-target
targets:LossyTarget`` with ``tests/`` on PYTHONPATH)."""

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
