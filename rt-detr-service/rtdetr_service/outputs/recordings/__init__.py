"""Recordings: the camera's own packets kept as MP4 segments, and clips cut from them."""
