"""Course tooling: learner feedback, exercise generation, grading, the `gpulab` command."""
