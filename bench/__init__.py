"""AIOS benchmarks (DESIGN.md §9): each runs a same-machine peer in the same run and prints ratio lines.

Run with `make bench` (all) or `make bench B=B1` (one); see bench/README.md.
"""
