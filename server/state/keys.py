"""Every Redis key and channel the gateway uses, under one prefix (default ``gamegw``).

::

    {p}:instances                 set    ids of instances that have announced themselves
    {p}:inst:{iid}:alive          string heartbeat, expires after heartbeat_ttl_s
    {p}:inst:{iid}:sids           set    the instance's connections (for cleaning up after it)
    {p}:inst:{iid}:rooms          set    rooms where the instance has members
    {p}:reap:{iid}                string lock: one survivor cleans a dead instance
    {p}:conn:{sid}                string one connection's details (JSON)
    {p}:conn:{sid}:rooms          set    the connection's rooms
    {p}:seen                      hash   sid -> last seen (epoch seconds), written in batches
    {p}:user:{uid}                zset   the user's sids, scored by connection time
    {p}:block:{uid}               string reconnects refused until it expires (simulate-drop)
    {p}:budget:{uid}              string the user's event budget when its last connection ended
    {p}:revoked:{uid}             string tokens of the user issued before this time are revoked
    {p}:revoked-jti:{jti}         string this one token is revoked
    {p}:sess:{session_id}         hash   one session: holder (sid, instance), state, grace_until, ...
    {p}:sess:{session_id}:rooms   hash   the session's rooms: room -> seq when last seen
    {p}:usess:{uid}               zset   the user's sessions, scored by creation time
    {p}:grace                     zset   sessions in grace, scored by when grace ends
    {p}:room:{{r}}:seq            string the room's last sequence number
    {p}:room:{{r}}:log            stream the last moves, entry id "{seq}-1", field e = move JSON
    {p}:room:{{r}}:users          hash   member user -> number of their sessions seated in the room
    {p}:room:{{r}}:seats          hash   seated session id -> its user (a seat belongs to a session)
    {p}:room:{{r}}:insts          set    instances with members in the room (who gets its events)
    {p}:room:{{r}}:state          string the game state (JSON) and its version {p}:room:{{r}}:ver
    {p}:room:{{r}}:tick           string a ticking game's lease: the instance that ticks the room (PX tick_lease_s)
    {p}:ch:{iid}                  channel everything addressed to one instance
    {p}:dash:watchers             string a dashboard is open somewhere; expires unless refreshed
    {p}:dash:feed                 channel the dashboard's deltas, published only while watchers exists

    {p}:room:{{r}}:ch             channel the room's moves and events (Redis Cluster: SPUBLISH)

Room keys carry the room in a hash tag, so one room's keys stay in one slot. In Redis Cluster
mode (``cluster=True``) a user's ``usess`` and ``budget`` keys carry the tag of the user's
bucket (:func:`.rcluster.bucket`), and so do the user's session ids (so ``sess`` keys) and the
bucket's own grace set ``{p}:grace:{{b}}``: each session script touches one slot.
"""

from __future__ import annotations

from . import rcluster


class Keys:
    def __init__(self, prefix: str = "gamegw", *, cluster: bool = False) -> None:
        self.p = prefix
        self.cluster = cluster
        self.instances = f"{prefix}:instances"
        self.seen = f"{prefix}:seen"
        self.grace = f"{prefix}:grace"
        self.dash_watchers = f"{prefix}:dash:watchers"
        self.dash_feed = f"{prefix}:dash:feed"

    def alive(self, instance_id: str) -> str:
        return f"{self.p}:inst:{instance_id}:alive"

    def inst_sids(self, instance_id: str) -> str:
        return f"{self.p}:inst:{instance_id}:sids"

    def inst_rooms(self, instance_id: str) -> str:
        return f"{self.p}:inst:{instance_id}:rooms"

    def reap(self, instance_id: str) -> str:
        return f"{self.p}:reap:{instance_id}"

    def conn(self, sid: str) -> str:
        return f"{self.p}:conn:{sid}"

    def user(self, user_id: str) -> str:
        return f"{self.p}:user:{user_id}"

    def block(self, user_id: str) -> str:
        return f"{self.p}:block:{user_id}"

    def budget(self, user_id: str) -> str:
        return f"{self.p}:budget:{self._tag(user_id)}{user_id}"

    def _tag(self, user_id: str) -> str:
        return rcluster.bucket(user_id) if self.cluster else ""

    def session_id(self, user_id: str, fresh: str) -> str:
        """A new session's id: ``fresh``, after the user's bucket tag in cluster mode."""
        return self._tag(user_id) + fresh

    def grace_of(self, user_id: str) -> str:
        """The grace set that holds the user's sessions."""
        return f"{self.grace}:{self._tag(user_id)}" if self.cluster else self.grace

    def graces(self) -> list[str]:
        """Every grace set: one, or one per bucket in cluster mode."""
        if not self.cluster:
            return [self.grace]
        return [f"{self.grace}:{{u{b}}}" for b in range(rcluster.BUCKETS)]

    def revoked_user(self, user_id: str) -> str:
        return f"{self.p}:revoked:{user_id}"

    def revoked_jti(self, jti: str) -> str:
        return f"{self.p}:revoked-jti:{jti}"

    def session(self, session_id: str) -> str:
        return f"{self.p}:sess:{session_id}"

    def user_sessions(self, user_id: str) -> str:
        return f"{self.p}:usess:{self._tag(user_id)}{user_id}"

    def room(self, room: str, part: str) -> str:
        return f"{self.p}:room:{{{room}}}:{part}"

    def room_keys(self, room: str) -> list[str]:
        """seq, log, users, insts, state, ver, seats: the order the Lua scripts expect."""
        return [self.room(room, part) for part in ("seq", "log", "users", "insts", "state", "ver", "seats")]

    def room_of(self, seats_key: str) -> str:
        """The room of a ``{p}:room:{{r}}:seats`` key."""
        return seats_key[len(self.p) + len(":room:{"):-len("}:seats")]

    def room_channel(self, room: str) -> str:
        return self.room(room, "ch")

    def room_of_channel(self, channel: str) -> str:
        """The room of a ``{p}:room:{{r}}:ch`` channel."""
        return channel[len(self.p) + len(":room:{"):-len("}:ch")]

    def channel(self, instance_id: str) -> str:
        return f"{self.p}:ch:{instance_id}"

    @property
    def channel_prefix(self) -> str:
        return f"{self.p}:ch:"
