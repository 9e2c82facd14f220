"""Pure scoring: rules, per-event evaluation and the reference state model. No I/O, no clock."""
