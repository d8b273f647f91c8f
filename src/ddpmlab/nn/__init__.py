"""Networks and how they run: the U-Net, its CPU kernels, precision, compilation and device choice."""
