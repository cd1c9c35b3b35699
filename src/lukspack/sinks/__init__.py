"""Destinations of an output image: where the bytes are stored."""
