"""Peer libraries rebuilt for benchmarks/peer_throughput.py (see README.md here)."""
