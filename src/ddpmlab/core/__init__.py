"""The math of DDPM: beta schedules, step grids, the forward / reverse process, the denoiser, losses and the NLL bound.

Imports nothing, so importing one module of the package runs only that module's imports.
"""
