"""What a compiled step needs of a device's memory, and what a device holds."""

import os

import jax


def peak_bytes(analysis) -> int:
    """XLA's count of one device's memory for a compiled step, from its memory_analysis():
    arguments + outputs − donated (aliased) buffers + temporaries; 0 where the backend gives none."""
    if analysis is None:
        return 0
    return (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
    )


def device_memory(device) -> int:
    """Bytes a device can hold: its allocator's limit; on a CPU, the host's memory shared by its devices."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // max(len(jax.local_devices()), 1)
