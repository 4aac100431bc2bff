"""What tests, benchmarks and scripts share (not installed with edged)."""
