"""Recordings: the cameras' own packets in MP4 segments, their index, and what is kept of them."""
