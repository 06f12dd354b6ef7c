"""rocker's benchmark: `python3 -m bench` (as root) measures rocker against its anchors. See docs/benchmarks.md."""
