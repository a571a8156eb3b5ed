"""Files in and out: slides, images, QuPath GeoJSON, training-data folders, atomic writes.

Knows nothing of the network. Frames: level-0 px of a slide, or image px (row = y, column = x).
"""
