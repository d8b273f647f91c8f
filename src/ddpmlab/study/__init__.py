"""Replicated studies: configs x training seeds, planned, checked and (soon) submitted to an executor."""
