"""The names params.yaml may give the math's options: a leaf module (no imports) that ``config`` reads.

Each tuple equals the keys of the registry that implements it (``tests/test_registries.py``):
adding a schedule, grid, objective or weighting is an entry there and a name here.
"""

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")  # core.schedules.SCHEDULE_FUNCTIONS
SPACINGS = ("uniform", "trailing", "quadratic", "logsnr", "karras", "arctan")  # core.step_grids.GRID_FUNCTIONS
SEARCHED = "searched"  # the grids the `search` stage finds on a trained model (sampling.grid_search)
SAMPLE_SPACINGS = (*SPACINGS, SEARCHED)  # what sample.spacing may list
OBJECTIVES = ("eps", "x0", "v")  # core.diffusion.DiffusionProcess.predict_x0_eps
VARIANCES = ("fixed_large", "fixed_small", "learned_range")  # core.diffusion.DiffusionProcess.reverse_variance
WEIGHTINGS = ("mse", "min_snr")  # core.losses.TrainingLoss
