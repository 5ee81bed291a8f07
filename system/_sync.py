"""A thin synchronous facade over ``Pool`` for scripts: the pool's event loop runs in a thread.

``with SyncPool(handler, "data") as pool: pool.submit("k", 1); pool.drain()`` -- every method
blocks the caller until the pool's loop has answered, and re-raises the pool's errors as they are.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from ._pool import Pool

T = TypeVar("T")


class SyncPool:
    def __init__(self, *args: Any, **kwargs: Any):
        self._pool = Pool(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "SyncPool is not started; use `with SyncPool(...)`"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start(self) -> SyncPool:
        ready = threading.Event()

        def run() -> None:
            loop: asyncio.AbstractEventLoop
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:  # pragma: no cover
                loop = asyncio.new_event_loop()
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="chaosgate-pool", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self._call(self._pool.start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def _stop_loop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop = None

    def close(self, grace: float = 10.0) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._pool.close(grace))
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, key: str, payload: Any, id: str | None = None) -> int:
        return self._call(self._pool.submit(key, payload, id))

    def submit_many(self, items: Iterable[tuple[Any, ...]]) -> list[int]:
        return self._call(self._pool.submit_many(list(items)))

    def query(self, key: str, timeout: float = 30.0) -> Any:
        return self._call(self._pool.query(key, timeout))

    def drain(self, timeout: float | None = None) -> None:
        self._call(self._pool.drain(timeout))

    async def _in_loop(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def result(self, id: str) -> tuple[bool, Any]:
        return self._call(self._in_loop(self._pool.result, id))

    def forget(self, *ids: str) -> int:
        return self._call(self._pool.forget(*ids))

    def dead_letters(self) -> list[dict[str, Any]]:
        return self._call(self._in_loop(self._pool.dead_letters))

    def stats(self) -> dict[str, Any]:
        return self._call(self._in_loop(self._pool.stats))

    def worker_pids(self) -> list[int]:
        return self._call(self._in_loop(self._pool.worker_pids))
