"""Pure geometry on arrays: outlines, rasterisation, elliptic Fourier contours, boxes and NMS.

Frame everywhere: continuous px, x right, y down; pixel (row r, column c) covers
[c, c+1) x [r, r+1), so its centre is (c + 0.5, r + 0.5).
"""
