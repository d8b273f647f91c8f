"""Names of the hardware options params.yaml may give: a leaf module (no imports) that ``config`` reads."""

PRECISIONS = ("auto", "fp32", "bf16")  # nn.acceleration.resolve_precision
DEVICES = ("auto", "cpu", "cuda", "mps")  # nn.devices.resolve_device
