"""Shard keys and Bytewax's placement of state keys and partitions.

dataflows.core.shards relies on two rules of Bytewax 0.21 (state key ->
worker by SipHash, partition -> worker by sorted index); these tests hold
Bytewax itself to them, then check the consequence in the real pipeline: on
two workers a one-symbol series is read, built into bars and written to the
lake on one worker.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import bytewax.operators as op
import pyarrow.compute as pc
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from bytewax.testing import TestingSource, cluster_main

from dataflows.core.shards import bytewax_worker_of, shard_index, shard_key, shard_keys, shard_of


class _WorkerOfThread(DynamicSink):
    """Notes which worker index each worker thread is."""

    def __init__(self, seen: dict[str, int]) -> None:
        self.seen = seen

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        self.seen[threading.current_thread().name] = worker_index

        class Nothing(StatelessSinkPartition):
            def write_batch(self, items: list) -> None:
                pass

        return Nothing()


def _placement(keys: list[str], parts: list[str], workers: int) -> tuple[dict, dict, dict]:
    """Run a probe flow on `workers` workers: the worker of each state key,
    of each source partition and of each sink partition."""
    thread_of_key: dict[str, str] = {}
    thread_of_source: dict[str, str] = {}
    thread_of_sink: dict[str, str] = {}
    worker_of_thread: dict[str, int] = {}

    class Part(StatefulSourcePartition):
        def __init__(self, name: str) -> None:
            self.name, self.done = name, False

        def next_batch(self) -> list:
            if self.done:
                raise StopIteration
            self.done = True
            thread_of_source[self.name] = threading.current_thread().name
            return []

        def snapshot(self) -> None:
            return None

    class Source(FixedPartitionedSource):
        def list_parts(self) -> list[str]:
            return parts

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> Part:
            return Part(for_part)

    class SinkPart(StatefulSinkPartition):
        def __init__(self, name: str) -> None:
            self.name = name

        def write_batch(self, items: list) -> None:
            thread_of_sink[self.name] = threading.current_thread().name

        def snapshot(self) -> None:
            return None

    class Sink(FixedPartitionedSink):
        def list_parts(self) -> list[str]:
            return parts

        def part_fn(self, item_key: str) -> int:
            return shard_index(item_key) if item_key[:1].isdigit() else 0

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> SinkPart:
            return SinkPart(for_part)

    def note(state: None, value: str) -> tuple[None, str]:
        thread_of_key[value] = threading.current_thread().name
        return None, value

    flow = Dataflow("placement")
    op.input("parts", flow, Source())
    keyed = op.input("keys", flow, TestingSource([(k, k) for k in keys]))
    op.output("workers", keyed, _WorkerOfThread(worker_of_thread))
    noted = op.stateful_map("note", keyed, note)
    op.output("sink", noted, Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=workers)

    def workers_of(threads: dict[str, str]) -> dict[str, int]:
        return {k: worker_of_thread[t] for k, t in threads.items()}

    return workers_of(thread_of_key), workers_of(thread_of_source), workers_of(thread_of_sink)


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_bytewax_puts_a_state_key_on_the_worker_bytewax_worker_of_names(workers):
    keys = [f"k{i}" for i in range(20)] + ["SPY", "ÄÖ-ü", "x" * 40] + list(shard_keys(16))

    placed, _, _ = _placement(keys, ["p"], workers)

    assert placed == {k: bytewax_worker_of(k, workers) for k in keys}


def test_bytewax_puts_a_partition_on_worker_sorted_index_mod_workers():
    parts = ["zz", "b", "a", "m", "c", "q", "x"]  # deliberately unsorted
    keys = [shard_key(i, 16) for i in range(len(parts))]  # sink items for parts 0..6

    _, sources, sinks = _placement(keys, parts, 3)

    expected = {p: i % 3 for i, p in enumerate(sorted(parts))}
    assert sources == expected
    assert sinks == {sorted(parts)[shard_index(k)]: shard_index(k) % 3 for k in keys}


@pytest.mark.parametrize(("shards", "aligned"), [(1, 1), (5, 5), (16, 16), (24, 24), (100, 50)])
def test_shard_keys_run_shard_i_on_worker_i_mod_workers_for_divisors(shards, aligned):
    keys = shard_keys(shards)

    assert len(set(keys)) == shards
    assert list(keys) == sorted(keys)
    assert [shard_index(k) for k in keys] == list(range(shards))
    for workers in (w for w in range(1, aligned + 1) if aligned % w == 0):
        assert [bytewax_worker_of(k, workers) for k in keys] == [i % workers for i in range(shards)]


def test_shard_index_reads_plain_and_aligned_keys_and_refuses_others():
    assert shard_index("0003-17") == 3
    assert shard_index("0003") == 3
    with pytest.raises(ValueError):
        shard_index("bars_1m")


def _table_symbols(table) -> set[str]:
    if not table.num_rows:
        return set()
    found = pc.unique(table.column("symbol")).to_pylist()
    return {s.decode() if isinstance(s, bytes) else s for s in found}  # raw rows: bytes


def _note_workers(monkeypatch) -> dict[str, dict[str, set[str]]]:
    """Per stage (parse, bars, lake ticks), the threads each symbol went
    through."""
    from connectors import lake
    from dataflows.stages import operators

    threads: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    def noting(stage: str, method, symbols_of):
        def wrapper(*args):
            result = method(*args)
            for symbol in symbols_of(args, result):
                threads[stage][symbol].add(threading.current_thread().name)
            return result

        return wrapper

    # parse runs where the source partition is read (no exchange before it)
    monkeypatch.setattr(
        operators,
        "parse_raw",
        noting("parse", operators.parse_raw, lambda args, parsed: _table_symbols(parsed.ticks)),
    )
    monkeypatch.setattr(
        operators.BarLogic,
        "on_batch",
        noting(
            "bars",
            operators.BarLogic.on_batch,
            lambda args, _: set().union(*(_table_symbols(t) for t in args[1])),
        ),
    )
    monkeypatch.setattr(
        lake._LakePartition,
        "write_batch",
        noting(
            "lake",
            lake._LakePartition.write_batch,
            lambda args, _: (
                # None: the commit clock's wake-up
                set().union(*(_table_symbols(t) for t in args[1] if t is not None))
                if args[0]._sink.table == "bronze/ticks"
                else set()
            ),
        ),
    )
    return threads


def _assert_each_symbol_on_one_worker(threads, names) -> None:
    assert set(threads["parse"]) == set(threads["bars"]) == set(threads["lake"]) == set(names)
    for symbol in names:
        (reader,) = threads["parse"][symbol]
        assert threads["bars"][symbol] == threads["lake"][symbol] == {reader}
    assert len({next(iter(threads["parse"][n])) for n in names}) == 2  # both workers worked


NAMES = ("AIG", "BAC", "IBM", "SPY")


def test_on_two_workers_a_one_symbol_series_is_read_built_and_written_on_one_worker(
    real_data: Path, run_pipeline, monkeypatch
):
    threads = _note_workers(monkeypatch)
    assert {shard_of(n, 16) % 2 for n in NAMES} == {0, 1}

    run_pipeline(f"file:{real_data / 'ticks' / '*_20131007.csv.gz'}", workers=2)

    _assert_each_symbol_on_one_worker(threads, NAMES)


def test_on_two_workers_a_symbol_of_a_four_partition_topic_stays_on_one_worker(
    kafka_broker, real_data: Path, run_pipeline, monkeypatch
):
    """The producer's default partitioner (librdkafka: crc32(key) %
    partitions) puts a symbol in partition shard % 4, read by the worker that
    holds the shard."""
    from dataflows.core.config import Settings
    from dataflows.replay import replay_ticks

    topic = kafka_broker.topic("aligned", 4)
    replay_ticks(
        Settings.load(env={}, kafka_brokers=kafka_broker.brokers),
        str(real_data / "ticks" / "*_20131007.csv.gz"),
        topic=topic,
    )
    threads = _note_workers(monkeypatch)

    run_pipeline("kafka", kafka_brokers=kafka_broker.brokers, topic_ticks=topic, workers=2)

    _assert_each_symbol_on_one_worker(threads, NAMES)
