"""matplotlib, headless, if installed (the `plots` extra): plots are a bonus, never a reason to fail."""
from __future__ import annotations


def pyplot():
    """matplotlib.pyplot with the Agg backend, or None (with a hint printed) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping plots (pip install 'fwpkm-rag[plots]')")
        return None
    return plt
