"""What the benchmarks report about the machine they ran on."""
import os
import platform
import resource


def cpu_model() -> str:
    """lscpu's 'Model name' (from /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> str:
    """CPU model, logical cores and the 1-minute load average (other work on the machine)."""
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, load average "
            f"{os.getloadavg()[0]:.1f}")


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all threads (tf.data's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
