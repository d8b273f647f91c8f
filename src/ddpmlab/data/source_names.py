"""Dataset sources params.yaml may name (``data.source``): a leaf module that ``config`` reads.

Equal to the keys of ``data.sources.LOADERS`` (``tests/test_registries.py``).
"""

SOURCES = ("digits", "mnist", "fashion_mnist", "cifar10", "folder")
