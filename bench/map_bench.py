"""decode + map CPU per IntegrationLogs insert (issue 14 part 4: at most 20 µs), with a same-run
baseline. Needs no services.

    .venv/bin/python bench/map_bench.py                        # this tree vs its reference path
    .venv/bin/python bench/map_bench.py --against 6b24ac0      # ... and vs an older commit
    .venv/bin/python bench/map_bench.py --against 6b24ac0 --callgrind   # instruction counts
    .venv/bin/python bench/map_bench.py --profile --gc consumer   # where this tree's time goes

What is measured is ``sink_bench.case_decode_map`` (case d of bench/sink_bench.py): the
recorded IntegrationLogs inserts of ``bench/envelopes.jsonl.gz``, copied with new ids and
positions to ``--events``, decoded and mapped in batches of 500 as ``Pipeline._changes`` does
for a table without lookups (``decode`` then ``pipeline.to_change``). Each run is two warm-up
passes, then ``time.process_time()`` over ``--passes`` passes; the figure is CPU µs per event,
median of ``--runs`` runs. The cases alternate run by run, so drift on a shared machine hits
them alike:

- ``this tree``: the pipeline's ``to_change`` (the compiled ``core.mapper``);
- ``reference``: the same events through the straightforward path still in this tree,
  ``decode`` then ``mapping.to_item`` / ``item_key`` (what the property tests of
  tests/unit/test_mapper.py compare the mapper with);
- ``--against REV``: this benchmark run in a child process on ``git archive REV`` of
  ``replicator/`` (that commit's decode and to_change).

``--profile`` measures this tree only, in this process: decode alone and map alone
(``pipeline.to_change`` over events decoded beforehand), the same split with the collector
off, then a cProfile of decode + map with its top entries by own time.

``--callgrind`` counts instructions instead (valgrind --tool=callgrind, repeatable where time is
not): each case runs in a child under valgrind once with ``--passes`` passes and once with
none; the difference over the events is instructions per event.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def worker(events: int, passes: int, runs: int, reference: bool, consumer_gc: bool) -> list[float]:
    """CPU µs per event of ``runs`` runs of the case, in this process."""
    sys.path.insert(0, str(HERE))
    import sink_bench

    from replicator.config import load_settings

    mapping = next(m for m in load_settings(None).tables if m.source == "dbo.integrationlogs")
    records = sink_bench.log_inserts(events)
    case: Callable[..., Any] = sink_bench.case_decode_map
    if reference:
        case = reference_case
    if consumer_gc:  # as `run` and `backfill` set the collector once their objects are built
        import replicator.app

        if hasattr(replicator.app, "collect_less_often"):
            replicator.app.collect_less_often()
        else:  # an older commit: the same setting, so that the code is what differs
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, *gc.get_threshold()[1:])
    for _ in range(2):
        case(mapping, records, None)
    out = []
    for _ in range(runs):
        start = time.process_time()
        for _ in range(passes):
            case(mapping, records, None)
        out.append((time.process_time() - start) / (events * max(passes, 1)) * 1e6)
    return out


def reference_case(mapping: Any, records: list[Any], _: Any) -> None:
    """case_decode_map on the mapping's own functions instead of the compiled mapper (as
    tests/unit/test_mapper.py's reference_change)."""
    import sink_bench

    from replicator.core.decode import decode
    from replicator.core.events import ChangeEvent, Op, Origin
    from replicator.core.mapping import item_key, to_item
    from replicator.stream.lookup import Lookups
    from replicator.stream.sink import Change

    for batch in sink_bench.batches(records):
        changes = []  # kept for the batch, as changes_of and the pipeline keep them
        for rec in batch:
            event = decode(rec.key, rec.value, Origin(rec.topic, rec.partition, rec.offset))
            if not isinstance(event, ChangeEvent):
                continue
            Lookups.require(mapping, event.row)
            if event.op is Op.DELETE:
                changes.append(Change(mapping, event, item_key(mapping, event.row), None))
                continue
            item, unavailable = to_item(mapping, event.row)
            key = {name: item[name] for name in mapping.key_attributes}
            old_key = None
            if event.before is not None and all(c.name in event.before for c in mapping.columns):
                before_key = item_key(mapping, event.before)
                old_key = before_key if before_key != key else None
            changes.append(Change(mapping, event, key, item, frozenset(unavailable), old_key))


def tree_of(rev: str) -> Path:
    """``replicator/`` of a commit, extracted into a temporary directory."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "replicator"], check=True, capture_output=True
    ).stdout
    target = Path(tempfile.mkdtemp(prefix="map-bench-"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def child(
    tree: Path, args: argparse.Namespace, *, reference: bool, passes: int, runs: int, valgrind: bool
) -> list[float] | int:
    """This script's worker in a child process on ``tree``: its timings, or with ``valgrind``
    the instructions it executed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--events", str(args.events)]
    cmd += ["--passes", str(passes), "--runs", str(runs)] + (["--reference"] if reference else [])
    cmd += ["--gc", args.gc]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(ROOT)])}
    if not valgrind:
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        return json.loads(out)
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", *cmd],
            env=env,
            check=True,
            capture_output=True,
        )
        for line in profile.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def profile(events: int, passes: int, runs: int, consumer_gc: bool, top: int) -> None:
    """This tree's decode + map split into its stages, then a cProfile of both (in this
    process, the collector set as ``--gc`` says)."""
    import cProfile
    import pstats

    sys.path.insert(0, str(HERE))
    import sink_bench

    from replicator.config import load_settings
    from replicator.core.decode import decode
    from replicator.core.events import ChangeEvent, Origin
    from replicator.stream.pipeline import to_change

    mapping = next(m for m in load_settings(None).tables if m.source == "dbo.integrationlogs")
    records = sink_bench.log_inserts(events)
    if consumer_gc:
        import replicator.app

        replicator.app.collect_less_often()

    def decode_all() -> list[Any]:
        return [decode(r.key, r.value, Origin(r.topic, r.partition, r.offset)) for r in records]

    decoded = [e for e in decode_all() if isinstance(e, ChangeEvent)]

    def map_all() -> None:
        for start in range(0, len(decoded), sink_bench.BATCH):  # kept per batch, as the pipeline
            [to_change(mapping, e) for e in decoded[start : start + sink_bench.BATCH]]

    def both() -> None:
        sink_bench.case_decode_map(mapping, records, None)

    def per_event(stage: Callable[[], Any]) -> float:
        stage()
        stage()
        values = []
        for _ in range(runs):
            start = time.process_time()
            for _ in range(passes):
                stage()
            values.append((time.process_time() - start) / (events * passes) * 1e6)
        return statistics.median(values)

    print(f"{'stage':<28} {'collector on':>13} {'collector off':>14}  (µs/event, median)")
    for name, stage in (("decode", decode_all), ("map (to_change)", map_all), ("both", both)):
        on = per_event(stage)
        gc.disable()
        off = per_event(stage)
        gc.enable()
        print(f"{name:<28} {on:>13.1f} {off:>14.1f}")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(passes):
        both()
    profiler.disable()
    print(f"\ncProfile of decode + map, {events} events x {passes} passes (top {top}, own time):")
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "worker"])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--against", help="also measure this commit's replicator/ (git rev)")
    parser.add_argument("--callgrind", action="store_true", help="instruction counts")
    parser.add_argument("--profile", action="store_true", help="this tree's stages and cProfile")
    parser.add_argument("--top", type=int, default=15, help="--profile: entries shown")
    parser.add_argument(
        "--gc",
        choices=["default", "consumer"],
        default="default",
        help="the cyclic collector as Python sets it, or as `run` sets it (app.collect_less_often;"
        " an --against commit without it gets the same setting)",
    )
    args = parser.parse_args()
    if args.mode == "worker":
        consumer_gc = args.gc == "consumer"
        print(json.dumps(worker(args.events, args.passes, args.runs, args.reference, consumer_gc)))
        return
    if args.profile:
        print(
            f"decode + map stages, {args.events} IntegrationLogs inserts x {args.passes} passes, "
            f"{args.runs} runs, collector {args.gc}, load average {os.getloadavg()[0]:.1f}"
        )
        profile(args.events, args.passes, args.runs, args.gc == "consumer", args.top)
        return

    cases: list[tuple[str, Path, bool]] = [("this tree", ROOT, False), ("reference", ROOT, True)]
    if args.against:
        cases.append((f"commit {args.against}", tree_of(args.against), False))
    print(
        f"decode + map, {args.events} IntegrationLogs inserts x {args.passes} passes, "
        f"{'instructions (callgrind)' if args.callgrind else f'{args.runs} runs'} per case, "
        f"collector {args.gc}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    figures: dict[str, float] = {}
    if args.callgrind:
        for name, tree, reference in cases:
            with_passes = child(
                tree, args, reference=reference, passes=args.passes, runs=1, valgrind=True
            )
            without = child(tree, args, reference=reference, passes=0, runs=1, valgrind=True)
            assert isinstance(with_passes, int) and isinstance(without, int)
            figures[name] = (with_passes - without) / (args.events * args.passes)
            print(f"  {name:<20} {figures[name]:>10,.0f} instructions/event", flush=True)
        unit = "instructions/event"
    else:
        runs: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for round_ in range(args.runs):  # one run of each case per round: drift hits all alike
            for name, tree, reference in cases:
                (cpu,) = child(
                    tree, args, reference=reference, passes=args.passes, runs=1, valgrind=False
                )  # type: ignore[misc]
                runs[name].append(cpu)
                print(f"  round {round_ + 1} {name:<20} {cpu:6.1f} µs/event", flush=True)
        figures = {name: statistics.median(values) for name, values in runs.items()}
        unit = "µs/event (median)"
    print(f"\n{'case':<22} {unit:>22} {'vs this tree':>13}")
    base = figures["this tree"]
    for name, value in figures.items():
        print(f"{name:<22} {value:>22,.1f} {value / base:>12.2f}x")


if __name__ == "__main__":
    main()
