"""Module-level handlers, importable by worker processes."""

from system import Message, Output


def append_and_echo(state, message: Message):
    """Append the payload; record ``payload * 2`` as the message's output."""
    state = [] if state is None else state
    state.append(message.payload)
    return Output(state, message.payload * 2)


def hang_on_request(state, message: Message):
    """Append the payload, but block (for an hour) on the payload ``"hang"``."""
    if message.payload == "hang":
        import time

        time.sleep(3600)
    state = [] if state is None else state
    state.append(message.payload)
    return state


def append_then_fail_on_bad(state, message: Message):
    """Append in place, then raise on the payload ``"bad"`` (damaging the state it was given)."""
    state = [] if state is None else state
    state.append(message.payload)
    if message.payload == "bad":
        raise ValueError("bad payload")
    return state


LEAKED: list[bytearray] = []


def leak_per_message(state, message: Message):
    """Keep ``message.payload`` MB for ever (a handler with a memory leak)."""
    LEAKED.append(bytearray(int(message.payload) * 2**20))
    return (state or 0) + 1


def allocate_on_request(state, message: Message):
    """Count messages; on a payload ("alloc", MB) allocate MB for the duration of the call."""
    if isinstance(message.payload, tuple):
        block = bytearray(message.payload[1] * 2**20)
        del block
    return (state or 0) + 1


def crash_on_request(state, message: Message):
    """Append the payload; the payload "crash" kills the worker process (every time)."""
    if message.payload == "crash":
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    state = [] if state is None else state
    state.append(message.payload)
    return state


def fail_first_attempts(state, message: Message):
    """Raise until the message's third attempt; then append (attempt, payload)."""
    if message.attempt < 3:
        raise ConnectionError(f"flaky dependency (attempt {message.attempt})")
    state = [] if state is None else state
    state.append((message.attempt, message.payload))
    return state


def unpicklable_output(state, message: Message):
    from system import Output

    if message.payload == "bad-output":
        return Output(state, lambda: None)
    return (state or 0) + 1
