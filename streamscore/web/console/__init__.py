"""The console: the hot-lead queue, a lead's story, KPIs, models and rules, as server-rendered
pages (`streamscore console`, and part of `streamscore dev`)."""
