"""nanoplus: NanoDet-Plus for the edge."""
__version__ = "0.1.0"
