"""Stream mechanics that are pure: aligning partitions into one deterministic order."""
