"""The benchmark harness spreads many agents over host processes within the file limit."""

from __future__ import annotations

from bench.harness import AGENTS_PER_HOST, host_prefixes, tasks_sent


def test_few_agents_keep_one_host_and_the_plain_ids() -> None:
    assert host_prefixes(100) == [("a", 100)]
    assert host_prefixes(AGENTS_PER_HOST) == [("a", AGENTS_PER_HOST)]


def test_5000_agents_spread_evenly_over_hosts_with_distinct_prefixes() -> None:
    hosts = host_prefixes(5000, per_host=1000)
    assert [count for _, count in hosts] == [1000] * 5
    assert len({prefix for prefix, _ in hosts}) == 5
    uneven = host_prefixes(2501, per_host=1000)
    assert sorted(count for _, count in uneven) == [833, 834, 834]
    assert sum(count for _, count in uneven) == 2501
    assert all(count <= 1000 for _, count in uneven)


def test_distinct_prefixes_never_name_the_same_agent_twice() -> None:
    ids = [
        f"{p}{i}" for p, count in host_prefixes(12_000, per_host=1000) for i in range(1, count + 1)
    ]
    assert len(ids) == len(set(ids)) == 12_000


def test_tasks_sent_counts_the_broker_pushes_between_two_readings() -> None:
    assert tasks_sent({"lpush": 10, "get": 3}, {"lpush": 17, "get": 9}) == 7
    assert tasks_sent({}, {"get": 1}) == 0
