"""Multiple-comparison corrections params.yaml may name (``evaluate.correction``): a leaf module that
``config`` reads. Equal to ``evaluation.multiplicity.METHODS``'s keys (tested)."""

CORRECTIONS = ("bh", "holm", "none")
