"""Channels between the supervisor and a worker: ordered, framed, many messages per write.

``StreamChannel`` runs over a connected stream socket (a socketpair) with asyncio streams: each
frame is a 4-byte big-endian length and a pickle. It serves process and thread workers, so both
pay the same serialisation and see the same failures (EOF mid-frame is ``EOFError``, as is a reset
connection). ``MemoryChannel`` is the inline runner's: a pair of in-process queues, no pickling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import struct
from typing import Any, Protocol

_HEADER = struct.Struct(">I")
_LIMIT = 2**31 - 1


class Channel(Protocol):
    """One end of a channel: frames in order; ``EOFError`` once the other end is gone."""

    async def recv(self) -> Any: ...
    def send_nowait(self, obj: Any) -> None: ...
    async def flush(self) -> None: ...
    def close(self) -> None: ...
    def break_(self) -> None: ...


class StreamChannel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> StreamChannel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        return cls(reader, writer)

    async def recv(self) -> Any:
        try:
            (n,) = _HEADER.unpack(await self._reader.readexactly(4))
            return pickle.loads(await self._reader.readexactly(n))
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise EOFError(f"channel closed: {e!r}") from e

    def send_nowait(self, obj: Any) -> None:
        """Queue a frame for writing; raises EOFError when the peer is gone."""
        if self._writer.is_closing():
            raise EOFError("channel closed")
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > _LIMIT:
            raise ValueError(f"frame of {len(data)} bytes exceeds the {_LIMIT}-byte limit")
        self._writer.write(_HEADER.pack(len(data)) + data)

    async def flush(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as e:
            raise EOFError(f"channel closed: {e!r}") from e

    def close(self) -> None:
        self._writer.close()

    def break_(self) -> None:
        """Shut the socket down both ways, as a failed link would: the peer sees EOF or EPIPE."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            # A duplicate of the fd shares the socket: shutting it down breaks the link for
            # both (and works where the transport's socket object refuses shutdown(), uvloop).
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(sock.fileno())) as s:
                s.shutdown(socket.SHUT_RDWR)


class MemoryChannel:
    """One end of an in-process channel; ``pair()`` makes two connected ends."""

    _EOF = object()

    def __init__(self, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]):
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    @classmethod
    def pair(cls) -> tuple[MemoryChannel, MemoryChannel]:
        a: asyncio.Queue[Any] = asyncio.Queue()
        b: asyncio.Queue[Any] = asyncio.Queue()
        return cls(a, b), cls(b, a)

    async def recv(self) -> Any:
        obj = await self._inbox.get()
        if obj is self._EOF:
            self._inbox.put_nowait(obj)  # stay at EOF for later readers
            raise EOFError("channel closed")
        return obj

    def send_nowait(self, obj: Any) -> None:
        if self._closed:
            raise EOFError("channel closed")
        self._outbox.put_nowait(obj)

    async def flush(self) -> None:
        await asyncio.sleep(0)

    def break_(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(self._EOF)
            self._inbox.put_nowait(self._EOF)
