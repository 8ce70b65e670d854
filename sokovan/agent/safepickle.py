"""Reads the few pickles a Backend.AI agent puts in msgpack ext values, without unpickling.

The stream is walked opcode by opcode (pickletools parses, it never imports or calls);
only plain values and an allow-list of constructors are rebuilt, as plain Python
values. Anything else raises PickleRejected, and the caller keeps the raw bytes.
"""

from __future__ import annotations

import pickletools
from decimal import Decimal, InvalidOperation
from typing import Any

from sokovan.errors import PickleRejected
from sokovan.types import ResourceSlot

MAX_OPS = 10_000
MAX_NODES = 20_000
MAX_NESTING = 32
MAX_DECIMAL_CHARS = 200
_BAI_TYPES = "ai.backend.common.types"
_BAI_DOCKER = "ai.backend.common.docker"
IMAGE_REF_FIELDS = ("name", "project", "tag", "registry", "architecture", "is_local")


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Call:
    """A constructor call recorded, not made: class, arguments and BUILD state."""

    __slots__ = ("args", "cls", "state")

    def __init__(self, cls: _Global, args: tuple[Any, ...]) -> None:
        self.cls, self.args, self.state = cls, args, None


class _Mark:
    pass


_MARK = _Mark()
_PLAIN_ARG_OPS = frozenset(
    {
        "BININT",
        "BININT1",
        "BININT2",
        "LONG1",
        "LONG4",
        "BINFLOAT",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "SHORT_BINBYTES",
        "BINBYTES",
        "BINBYTES8",
        "INT",
        "LONG",
    }
)
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_IGNORED = frozenset({"PROTO", "FRAME", "STOP"})


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise PickleRejected("MARK missing")


def _step(name: str, arg: Any, stack: list[Any], memo: dict[int, Any]) -> None:
    if name in _PLAIN_ARG_OPS:
        stack.append(arg)
    elif name in _CONSTANTS:
        stack.append(_CONSTANTS[name])
    elif name == "MARK":
        stack.append(_MARK)
    elif name in ("EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT"):
        stack.append({"EMPTY_TUPLE": (), "EMPTY_LIST": [], "EMPTY_DICT": {}}[name])
    elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
        n = int(name[-1])
        items = tuple(stack[-n:])
        del stack[-n:]
        stack.append(items)
    elif name == "TUPLE":
        stack.append(tuple(_pop_mark(stack)))
    elif name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
        memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
    elif name in ("BINGET", "LONG_BINGET", "GET"):
        stack.append(memo[int(arg)])
    else:
        _step_structure(name, arg, stack)


def _step_structure(name: str, arg: Any, stack: list[Any]) -> None:
    if name == "APPEND":
        value = stack.pop()
        stack[-1].append(value)
    elif name == "APPENDS":
        items = _pop_mark(stack)
        stack[-1].extend(items)
    elif name == "SETITEM":
        value, key = stack.pop(), stack.pop()
        stack[-1][key] = value
    elif name == "SETITEMS":
        items = _pop_mark(stack)
        stack[-1].update(zip(items[::2], items[1::2], strict=True))
    elif name == "STACK_GLOBAL":
        global_name, module = stack.pop(), stack.pop()
        stack.append(_Global(str(module), str(global_name)))
    elif name == "GLOBAL":
        module, _, global_name = str(arg).partition(" ")
        stack.append(_Global(module, global_name))
    elif name in ("REDUCE", "NEWOBJ"):
        args, cls = stack.pop(), stack.pop()
        if not isinstance(cls, _Global) or not isinstance(args, tuple):
            raise PickleRejected(f"{name} on a non-class")
        stack.append(_Call(cls, args))
    elif name == "BUILD":
        state = stack.pop()
        if not isinstance(stack[-1], _Call):
            raise PickleRejected("BUILD on a non-object")
        stack[-1].state = state
    else:
        raise PickleRejected(f"opcode {name} is not allowed")


class _Finisher:
    """Turns the parsed stack value into plain values, within a node and depth budget.

    Memo references can make a short stream describe a huge or cyclic graph; the
    budget stops that before it costs memory or recursion.
    """

    def __init__(self, enum_ok: bool) -> None:
        self.enum_ok = enum_ok
        self.nodes = 0

    def __call__(self, value: Any, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_NESTING:
            raise PickleRejected("pickle graph too large or cyclic")
        if isinstance(value, _Call):
            return _construct(value, self, depth + 1)
        if isinstance(value, _Global | _Mark):
            raise PickleRejected("a bare class reference")
        if isinstance(value, list):
            return [self(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return tuple(self(v, depth + 1) for v in value)
        if isinstance(value, dict):
            return {self(k, depth + 1): self(v, depth + 1) for k, v in value.items()}
        return value


def _decimal(text: Any) -> Decimal:
    if not isinstance(text, str) or len(text) > MAX_DECIMAL_CHARS:
        raise PickleRejected("Decimal argument is not a short string")
    try:
        return Decimal(text)
    except InvalidOperation as e:
        raise PickleRejected(f"bad Decimal {text!r}") from e


def _construct(call: _Call, finish: _Finisher, depth: int) -> Any:
    where = (call.cls.module, call.cls.name)
    args = tuple(finish(a, depth) for a in call.args)
    raw_state = call.state
    if isinstance(raw_state, tuple) and len(raw_state) == 2 and raw_state[0] is None:
        raw_state = raw_state[1]  # (slots state, dict state) of a class with __slots__
    if isinstance(raw_state, dict):
        # Derived caches (ImageRef's tag set) are rebuilt from the fields, not read.
        raw_state = {k: v for k, v in raw_state.items() if k != "_tag_set"}
    state = finish(raw_state, depth)
    if where == ("decimal", "Decimal") and len(args) == 1:
        return _decimal(args[0])
    if where == (_BAI_TYPES, "BinarySize") and len(args) == 1 and isinstance(args[0], int):
        return int(args[0])
    if where == (_BAI_TYPES, "ResourceSlot") and isinstance(state, dict):
        data = state.get("data", {})
        if isinstance(data, dict):
            return ResourceSlot({str(k): _decimal(str(v)) for k, v in data.items()})
    if where == (_BAI_TYPES, "SlotName"):
        text = args[0] if args else (state or {}).get("data") if isinstance(state, dict) else None
        if isinstance(text, str):
            return text
    if where == (_BAI_DOCKER, "ImageRef"):
        return _image_ref_fields(args, state)
    enum_like = call.cls.module.startswith("ai.backend.") and len(args) == 1
    if finish.enum_ok and enum_like and isinstance(args[0], str | int):
        return args[0]
    raise PickleRejected(f"constructor {call.cls.module}.{call.cls.name} is not allowed")


def _image_ref_fields(args: tuple[Any, ...], state: Any) -> dict[str, Any]:
    if args:
        fields = dict(zip(IMAGE_REF_FIELDS, args, strict=False))
    elif isinstance(state, dict):
        fields = {k: state[k] for k in IMAGE_REF_FIELDS if k in state}
    else:
        raise PickleRejected("ImageRef without fields")
    return {"__image_ref__": True, **fields}


def read_pickle(data: bytes, enum_ok: bool = True) -> Any:
    """Rebuilds the plain value a pickle stream describes, or raises PickleRejected."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
            if count >= MAX_OPS:
                raise PickleRejected(f"more than {MAX_OPS} opcodes")
            if opcode.name not in _IGNORED:
                _step(opcode.name, arg, stack, memo)
        if len(stack) != 1:
            raise PickleRejected("the stream does not leave exactly one value")
        return _Finisher(enum_ok)(stack[0])
    except PickleRejected:
        raise
    except Exception as e:  # malformed stream: truncated, bad memo index, wrong types
        raise PickleRejected(f"malformed pickle: {type(e).__name__}: {e}") from e
