"""Phase: Redis bytes per lead at --memory-leads leads under the example rules."""

from __future__ import annotations

from benchmarks.memory import measure_memory
from benchmarks.session import RULES_FILE, Session, say


def run_memory(session: Session) -> None:
    """Load --memory-leads leads x 3 events; INFO and MEMORY USAGE per lead."""
    args = session.args
    say(f"memory: loading {args.memory_leads:,} leads x 3 events")
    result = measure_memory(
        session.stack.redis_url,
        f"bench:{session.suffix}:mem",
        RULES_FILE,
        args.memory_leads,
        args.seed,
        workload=session.workload_memory,
    )
    session.results["memory"] = result.as_dict()
    say(f"memory: {result.bytes_per_lead_info:,.0f} B/lead (INFO used_memory delta)")
