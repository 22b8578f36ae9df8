"""Performance benchmarks: one script per figure of BENCHMARKS.md.

    python -m bench.train_step    --config configs/vp/cifar10_ddpmpp_continuous.py --dtype bfloat16
    python -m bench.sampler       --config configs/vp/cifar10_ddpmpp_continuous.py --dtype bfloat16
    python -m bench.likelihood    --config configs/vp/cifar10_ddpmpp_continuous.py
    python -m bench.compile_cache --config configs/vp/cifar10_ddpmpp_continuous.py

Each prints one JSON line per figure and appends it to bench/results/<name>.jsonl (or to
the folder given by --out). `--tiny` shrinks the network for a CPU smoke run.
"""
