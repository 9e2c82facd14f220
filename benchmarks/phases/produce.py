"""Phase: build a job's seeded workload, produce it to its own topics once, and (simple job)
compute the reference outcome every run of it must reach."""

from __future__ import annotations

import time

import orjson

from benchmarks.kafkaio import create_topics, highwaters, produce_all
from benchmarks.session import WINDOW_MS, JobData, Session, say
from benchmarks.simple_job import points_of
from benchmarks.simple_reference import SimpleEvent, reference
from benchmarks.workload import Job, Message, build_workload, leads_per_batch

STAGE_SAMPLE = 100_000


def produce_job(session: Session, job: Job) -> JobData:
    """Produce `job`'s workload; returns its topics, size and expected outcome."""
    args = session.args
    started = time.perf_counter()
    end_ms = time.time_ns() // 1_000_000 - 60_000
    workload = build_workload(
        args.events, args.leads, args.seed, end_ms, WINDOW_MS, args.partitions, job
    )
    gen_s = time.perf_counter() - started
    messages = workload.messages
    total = len(messages)
    say(f"{job} workload: {total:,} events over {args.leads:,} leads built in {gen_s:.1f}s")
    info = {
        "events": total,
        "leads": workload.leads,
        "profiled_leads": workload.profiled_leads,
        "segment_shaped": workload.segment_shaped,
        "by_type": dict(workload.by_type.most_common()),
        "mean_bytes": sum(len(m.value) for m in messages) / total,
        "event_time_window_days": WINDOW_MS / 86_400_000,
        "build_s": gen_s,
        # Leads a batch touches: what batching can amortize.
        "leads_per_batch": leads_per_batch(messages, args.batch),
        "record_timestamps": "event time" if job == "simple" else "producer's clock",
    }
    bootstrap = session.stack.kafka_bootstrap
    inputs = session.input_topics(job)
    create_topics(bootstrap, inputs, args.partitions)
    # The simple job's records carry their event time as the timestamp: Quix Streams merges
    # concatenated topics by record timestamp.
    acked, produce_s = produce_all(bootstrap, inputs, messages, event_time=job == "simple")
    say(f"{job}: produced {total:,} records in {produce_s:.1f}s ({total / produce_s:,.0f}/s)")
    marks = highwaters(bootstrap, inputs, args.partitions)
    wrong = {tp: (hw, acked.get(tp, 0)) for tp, hw in marks.items() if hw != acked.get(tp, 0)}
    if wrong:
        raise RuntimeError(f"high watermarks differ from records acked: {wrong}")
    info["produce_s"] = produce_s
    data = JobData(job, inputs, total)
    if job == "simple":
        events = simple_events(messages)
        started = time.perf_counter()
        data.expected = reference(events, decay_penalties=True)
        info["reference_s"] = time.perf_counter() - started
        # For a streamscore without decay.penalties (see phases/throughput.py).
        data.expected_undecayed = reference(events, decay_penalties=False)
        info["reference_handoffs"] = len(data.expected.handoffs)
        say(
            f"simple: reference computed in {info['reference_s']:.1f}s: "
            f"{len(data.expected.scores):,} leads, {len(data.expected.handoffs):,} handoffs"
        )
    else:
        data.stage_sample = messages[:STAGE_SAMPLE]
    session.results.setdefault("workloads", {})[job] = info
    session.jobs[job] = data
    return data


def simple_events(messages: list[Message]) -> list[SimpleEvent]:
    """The simple job's events as the reference takes them, from the produced documents."""
    out = []
    for m in messages:
        doc = orjson.loads(m.value)
        points = points_of(doc)
        if points is not None:
            out.append(SimpleEvent(doc["lead_id"], doc["event_id"], doc["time"], points))
    return out
