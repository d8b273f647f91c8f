"""Names of the hardware options params.yaml may give: a leaf module (no imports) that ``config`` reads."""

AUTO = "auto"  # measured on the machine at hand (nn.autotune), for precision, channels_last and compile
PRECISIONS = (AUTO, "fp32", "bf16")  # nn.execution.Execution
SWITCHES = (AUTO, True, False)  # channels_last, compile
DEVICES = (AUTO, "cpu", "cuda", "mps")  # nn.devices.resolve_device


def switch(text: str | bool) -> str | bool:
    """A switch given as text (a command-line flag, an MLflow param): 'true' / 'false' -> bool, 'auto' stays."""
    value = {"true": True, "false": False, AUTO: AUTO}.get(str(text).lower())
    if value is None:
        raise ValueError(f"got {text!r}; allowed: auto, true, false")
    return value
