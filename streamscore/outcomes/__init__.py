"""Sales outcomes: the outcome events, per-lead funnel attribution, KPI counters and the report."""
