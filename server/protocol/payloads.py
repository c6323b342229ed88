"""One model per client event. A payload that does not fit gets a ``bad_request`` ack."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

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
