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
