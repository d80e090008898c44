"""Results: the collector that rebuilds RESULTS.md from run directories."""
