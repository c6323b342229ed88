"""Redis Cluster mode's pure parts: its URL, the slots of a user's keys, the sharded fan-out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from gamegw.server.cluster.bus import EMIT
from gamegw.server.config import check_redis_url
from gamegw.server.protocol.errors import ConfigError
from gamegw.server.state import rcluster
from gamegw.server.state.keys import Keys
from gamegw.server.state.redis_url import RedisTarget, parse_redis_url
from gamegw.server.state.rooms_redis import MOVE, SERVER_MOVE, TICK


def test_cluster_urls_are_accepted_and_name_their_nodes():
    for url in ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/0", "valkey+cluster://h:1", "redis+cluster://u:p@h:1/"):
        check_redis_url("redis_url", url)
    target = parse_redis_url("redis+cluster://u:p%40w@a:1,b/0")
    assert target == RedisTarget("cluster", username="u", password="p@w", nodes=(("a", 1), ("b", 6379)))


@pytest.mark.parametrize(("url", "why"), [
    ("redis+cluster://h:1/2", " names the database '2': a cluster has database 0 only"),
    ("redis+cluster://h:1/0/service", " names the database '0/service': a cluster has database 0 only"),
    ("redis+cluster://u:secret@h:x/0", " has a bad port in 'h:x'"),
])
def test_a_bad_cluster_url_is_refused_with_its_reason(url, why):
    with pytest.raises(ConfigError) as refused:
        check_redis_url("redis_url", url)
    assert str(refused.value) == f"redis_url: {url.replace('secret', '***')!r}{why}"
    assert "redis+cluster://[user:password@]host1:port1[,host2:port2...]/0" in str(refused.value.hint)


@given(st.text(min_size=1, max_size=40), st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))
def test_a_users_session_keys_share_one_slot(user, fresh):
    """What the SEAT, DROP, END and EXPIRE_DUE scripts touch for one user is in one slot."""
    k = Keys("gw", cluster=True)
    session = k.session_id(user, fresh)
    slots = {key_slot(x.encode()) for x in (k.user_sessions(user), k.budget(user), k.grace_of(user),
                                            k.session(session), k.session(session) + ":rooms")}
    assert len(slots) == 1
    assert k.grace_of(user) in k.graces() and len(k.graces()) == rcluster.BUCKETS


def test_one_redis_keeps_its_key_names():
    k = Keys("gw")
    assert (k.user_sessions("u"), k.budget("u"), k.grace_of("u"), k.session_id("u", "abc")) == (
        "gw:usess:u", "gw:budget:u", "gw:grace", "abc")
    assert k.graces() == ["gw:grace"]


@pytest.mark.parametrize("script", [MOVE, SERVER_MOVE, TICK, EMIT])
def test_the_fan_out_becomes_one_spublish_to_the_last_key(script):
    sharded = rcluster.sharded(script)
    assert "'PUBLISH'" not in sharded
    assert sharded.count("redis.call('SPUBLISH', KEYS[#KEYS], ") == 1


def test_a_script_without_fan_out_is_refused():
    with pytest.raises(ValueError, match="no fan-out"):
        rcluster.sharded("return 1")
