"""Real-time RT-DETRv2 analysis of RTSP streams, served over HTTP and WebSocket."""

__version__ = "0.1.0"
