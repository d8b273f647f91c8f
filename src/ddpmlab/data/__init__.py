"""Image data: the uint8 image set, dataset sources (digits, MNISTs, CIFAR-10, folders), downloads and PNG grids."""
