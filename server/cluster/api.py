"""What the gateway and the admin API ask of the cluster: act on a user wherever they are
connected (kick, revoke, drop), close one connection anywhere, list the instances. One instance
(``control.LocalCluster``) or many over Redis (``control.RedisCluster``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol.codes import Disconnect


@dataclass
class Outcome:
    """What a cluster-wide operation did: connections acted on, per instance."""

    user: str
    count: int = 0
    instances: dict[str, int] = field(default_factory=dict)
    unconfirmed: list[str] = field(default_factory=list)  # instances that did not answer
    ended: int = 0  # sessions in grace ended (a kick ends the seats of a user who just dropped too)

    @property
    def confirmed(self) -> bool:
        return not self.unconfirmed

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "count": self.count, "instances": self.instances,
                "unconfirmed": self.unconfirmed, "confirmed": self.confirmed, "ended": self.ended}


class Cluster(Protocol):
    async def kick(self, user_id: str, reason: str) -> Outcome: ...

    async def revoke(self, user_id: str, jti: str | None, exp: float | None = None) -> Outcome:
        """Revoke the user's tokens issued before now (or one ``jti``, whose ``exp`` may be given, so
        that the revocation is kept until then); close what used them. A user's revocation returns
        once a token minted from then on is accepted (``iat`` is in whole seconds: under a second)."""
        ...

    async def drop(self, user_id: str, block_s: float) -> Outcome: ...

    async def close_sid(self, sid: str, why: Disconnect, instance_id: str | None = None) -> bool:
        """Close one connection wherever it is (``instance_id`` when the caller knows it: a
        connection whose connect is under way has no registry entry yet)."""
        ...

    async def is_blocked(self, user_id: str) -> bool: ...

    async def instances(self) -> list[dict[str, Any]]: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...
