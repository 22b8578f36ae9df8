"""Performance benchmarks, one script per figure of BENCHMARKS.md (`python -m bench.<name>`,
usage in each script's `main`): each prints one JSON line per figure and appends it to
bench/results/<name>.jsonl (or --out); `--tiny` shrinks the network for a CPU smoke run."""
