"""captiond: caption photos with a local vision model and write the captions into the files themselves."""

__version__ = "0.1.0"
