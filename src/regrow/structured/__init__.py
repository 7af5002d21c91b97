"""Latency-constrained channel sparsity: channel groups, soft channel masks, latency
tables and physical slimming (HALP, Shen et al. 2022; IEE appendix §4)."""
