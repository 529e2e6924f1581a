"""The Restore (DIP) engine's benchmarks, each runnable alone and writing under bench/results/dip/.

* `speed`    s/iteration, peak RSS and FLOP/s vs sgemm per task and speed switch
             (`python -m bench.dip.speed --quick`; also part 6 of `python -m bench`, via bench/dip_hook.py)
* `quality`  PSNR against the DIP paper's reference numbers (`python -m bench.dip.quality --data DIR`)
* `batch`    batched DIP and CUDA graphs vs one job at a time, jobs/s (`python -m bench.dip.batch`)
* `common`   what the three share: the results folder, the device clock, the test images and their noise

A sub-package rather than three `bench/dip_*.py` modules: the paths `bench/dip/<name>.py` stay what
the README, samples/README.md, .gitignore and the committed results' markdown already name, and the
three modules share helpers no other part of the benchmarks needs.
"""
