"""The figures (matplotlib, headless) of the run report, the sample stage and `ddpmlab compare`, one module per document;
style.py holds what they share."""
