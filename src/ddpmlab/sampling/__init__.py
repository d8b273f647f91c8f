"""Drawing images: the sampler registry, ancestral samplers, ODE solvers, seeded noise, guidance and the run plan."""
