"""The Earth Engine engine: the method's steps as server-side graphs, and their exports."""
