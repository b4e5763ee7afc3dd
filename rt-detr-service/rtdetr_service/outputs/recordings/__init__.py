"""Recordings: the cameras' own packets in MP4 segments, their index, what is kept of them, and
clips cut from them."""
