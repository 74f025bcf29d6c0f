"""pytest-benchmark timings of the pieces a PPO iteration is made of (see README, "Benchmarks and regressions")."""
