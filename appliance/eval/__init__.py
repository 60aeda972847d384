"""Detector evaluation on public benchmarks (SKAB)."""
