"""Devices: `auto` picks cuda, then mps, then cpu; an absent device is a clear error."""
import os
import platform

import torch

from optimstudy.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str) -> str:
    """The concrete device for `name`, or a UsageError naming what is available."""
    name = str(name).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if "mps" in available_devices() else "cpu"
    valid_form = name in ("cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())
    if not valid_form:
        raise UsageError(f"unknown device '{name}'; valid: {', '.join(DEVICE_CHOICES)}")
    if name not in available_devices():
        raise UsageError(
            f"device '{name}' is not available on this machine; available: {', '.join(available_devices())}"
        )
    return name


def device_is_present(name: str) -> bool:
    try:
        resolve_device(name)
        return True
    except UsageError:
        return False


def device_label(device: str) -> str:
    """A human name for the hardware: the GPU's name, or the CPU model."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    if device == "mps":
        return f"Apple {platform.machine()} (MPS)"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
    elif device == "mps":
        torch.mps.synchronize()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
