"""The loadtest's seq checker fires: a gap in a room's sequence numbers, made in the gateway's
own Redis while the swarm plays, is reported as a failure of the run (issue 13: "0 failures"
must not be what a broken detector says too)."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from tests.cli.run import gamectl

pytestmark = pytest.mark.timeout(180)


async def test_a_seq_gap_in_the_gateway_fails_the_run(cluster_factory, redis_server, redis_prefix) -> None:
    [gw] = await cluster_factory(1)
    run = asyncio.ensure_future(gamectl("loadtest", "--host", gw.url, "--json", "-u", "4", "-r", "4", "-t", "5s",
                                        "--room-size", "2", "--move-rate", "4", timeout=120))
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        seq_keys: list[str] = []
        for _ in range(100):  # until both rooms have moves
            await asyncio.sleep(0.1)
            seq_keys = [k async for k in redis.scan_iter(f"{redis_prefix}:room:*:seq")]
            if len(seq_keys) == 2 and min(int(v or 0) for v in await redis.mget(seq_keys)) > 3:
                break
        assert len(seq_keys) == 2, seq_keys
        for key in seq_keys:  # the next move in each room skips one seq: a gap every member sees
            await redis.incr(key)
    finally:
        await redis.aclose()
    code, out, err = await run
    report = json.loads(out)
    assert code == 1, err
    gaps = [e for e in report["errors"] if e["name"] == "broadcast" and "gap: expected" in e["error"]]
    assert gaps and sum(e["occurrences"] for e in gaps) >= 4, report["errors"]  # 2 rooms x 2 members
    assert not report["ok"]
