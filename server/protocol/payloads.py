"""One model per client event. A payload that does not fit gets a ``bad_request`` ack."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .codes import AckCode
from .errors import ActionError

RoomName = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class JoinMsg(_Payload):
    room: RoomName


class LeaveMsg(_Payload):
    room: RoomName


class MoveMsg(_Payload):
    room: RoomName
    action: dict[str, Any]


class SyncMsg(_Payload):
    room: RoomName
    after_seq: Annotated[StrictInt, Field(ge=0)]


class StateMsg(_Payload):
    room: RoomName


class RefreshMsg(_Payload):
    token: Annotated[StrictStr, Field(min_length=1)]


M = TypeVar("M", bound="_Payload")


def parse(model: type[M], data: Any) -> M:
    """Validate ``data`` against ``model`` or raise ``bad_request`` naming the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "payload"
        raise ActionError(AckCode.BAD_REQUEST, f"{where}: {err.get('msg', 'invalid')}") from None


def encode_action(action: dict[str, Any], max_bytes: int) -> str:
    """A move's ``action`` as the compact JSON text that is logged and sent: ``bad_request`` when
    it is not plain JSON, ``payload_too_large`` when it is over ``max_bytes``."""
    try:
        raw = orjson.dumps(action)
    except TypeError:
        raise ActionError(AckCode.BAD_REQUEST, "action must be plain JSON") from None
    if len(raw) > max_bytes:
        raise ActionError(AckCode.PAYLOAD_TOO_LARGE, f"action is {len(raw)} bytes; the limit is {max_bytes}")
    return raw.decode()
