"""Running a model: devices and precision, tiling, tissue, reading tiles, decoding network
outputs into nuclei, merging tiles, writing GeoJSON, and the slide pipeline that wires them."""
