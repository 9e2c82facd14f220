"""Redis edge: key layout, Lua scripts and the store that applies decisions atomically."""
