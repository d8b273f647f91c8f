"""Feature extractors params.yaml may name (``evaluate.feature_extractor``): a leaf module that ``config``
reads, so validating params never imports torch-fidelity. Equal to ``evaluation.metrics.EXTRACTORS``'s keys."""

FEATURE_EXTRACTORS = ("classifier", "inception-v3-compat")
