"""``redis_url``: the forms the gateway accepts, what each turns into, and the message for a bad one."""

from __future__ import annotations

import pytest

from gamegw.server.config import check_redis_url
from gamegw.server.protocol.errors import ConfigError
from gamegw.server.state.redis_url import RedisTarget, parse_redis_url


@pytest.mark.parametrize(("url", "target"), [
    ("redis://127.0.0.1:6379/0", RedisTarget("direct", "redis://127.0.0.1:6379/0", host="127.0.0.1")),
    ("valkey://cache:6390/2", RedisTarget("direct", "redis://cache:6390/2", host="cache", port=6390, db=2)),
    ("valkeys://u:p%40ss@cache", RedisTarget("direct", "rediss://u:p%40ss@cache", host="cache", tls=True,
                                             username="u", password="p@ss")),
    ("rediss://:secret@cache:6380", RedisTarget("direct", "rediss://:secret@cache:6380", host="cache", port=6380,
                                                tls=True, password="secret")),
    ("unix:///run/redis.sock", RedisTarget("direct", "unix:///run/redis.sock", path="/run/redis.sock")),
    ("redis+sentinel://s1:26379,s2:26380,s3/1/mymaster",
     RedisTarget("sentinel", db=1, nodes=(("s1", 26379), ("s2", 26380), ("s3", 26379)), service="mymaster")),
    ("valkey+sentinel://app:pw@[::1]:5000,10.0.0.2:5001/0/main",
     RedisTarget("sentinel", username="app", password="pw", nodes=(("::1", 5000), ("10.0.0.2", 5001)),
                 service="main")),
    ("redis+sentinel://:pw@s1:26379//svc", RedisTarget("sentinel", password="pw", nodes=(("s1", 26379),),
                                                       service="svc")),
    ("redis+cluster://n1:7000,n2:7001/0", RedisTarget("cluster", nodes=(("n1", 7000), ("n2", 7001)))),
])
def test_what_a_url_names(url: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == target


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "valkey://cache:6390/2", "valkeys://cache",
                                 "redis+sentinel://s1:26379,s2:26380/0/mymaster",
                                 "valkey+sentinel://user:pw@s1:26379/3/main", "redis+cluster://n1:7000,n2/0"])
def test_good_urls_pass_the_check(url: str) -> None:
    check_redis_url("redis_url", url)


@pytest.mark.parametrize(("url", "message"), [
    ("localhost:6379", "redis_url: 'localhost:6379' is not a Redis URL"),
    ("not a url", "redis_url: 'not a url' is not a Redis URL"),
    ("http://h:6379", "redis_url: 'http://h:6379' has the scheme 'http', which is not a Redis one"),
    ("redis://", "redis_url: 'redis://' names no host"),
    ("valkey://h:99999", "redis_url: 'valkey://h:99999' has a bad port"),
    ("redis://h/zero", "redis_url: 'redis://h/zero' names the database 'zero', which is not a number"),
    ("unix://", "redis_url: 'unix://' names no socket path (unix:///path/to/redis.sock)"),
    ("redis+sentinel://s1:26379/0", "redis_url: 'redis+sentinel://s1:26379/0' names no service: the master's "
                                    "name in Sentinel goes after the database (redis+sentinel://host:26379/0/mymaster)"),
    ("redis+sentinel://s1:26379", "redis_url: 'redis+sentinel://s1:26379' names no service: the master's name in "
                                  "Sentinel goes after the database (redis+sentinel://host:26379/0/mymaster)"),
    ("redis+sentinel://s1:port/0/m", "redis_url: 'redis+sentinel://s1:port/0/m' has a bad port in 's1:port'"),
    ("redis+sentinel://s1:0/0/m", "redis_url: 'redis+sentinel://s1:0/0/m' has a bad port in 's1:0'"),
    ("redis+sentinel://s1,,s2/0/m", "redis_url: 'redis+sentinel://s1,,s2/0/m' has an empty host in its list"),
    ("redis+sentinel://:26379/0/m", "redis_url: 'redis+sentinel://:26379/0/m' has an empty host in ':26379'"),
    ("valkey+sentinel://s1/x/m", "redis_url: 'valkey+sentinel://s1/x/m' names the database 'x', which is not a number"),
    ("redis+sentinel://s1/0/m/extra", "redis_url: 'redis+sentinel://s1/0/m/extra' names the service "
                                      "'m/extra', which contains '/'"),
    ("redis+sentinel://s1/0/m?ssl=1", "redis_url: 'redis+sentinel://s1/0/m?ssl=1' takes no query string or "
                                      "fragment"),
])
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_redis_url("redis_url", url)
    assert str(caught.value) == message
    assert "redis+sentinel://[user:password@]host1:port1,host2:port2/db/service" in str(caught.value.hint)


def test_the_password_of_a_sentinel_url_is_masked_in_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        check_redis_url("redis_url", "redis+sentinel://app:hunter2@s1:26379/0")
    assert "hunter2" not in str(caught.value) and "app:***@s1:26379" in str(caught.value)
