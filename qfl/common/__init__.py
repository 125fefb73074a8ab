"""The shared core: what every package may import, importing nothing of the project itself."""
