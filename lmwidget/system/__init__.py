"""The machine underneath: resources (psutil, NVML), CPU threads, atomic files, JSON files, and exit."""
