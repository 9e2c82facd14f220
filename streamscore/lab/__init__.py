"""The model lab: A/B assignment, two-proportion tests, model diffs, learned weights, promotion."""
