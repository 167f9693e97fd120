"""Slow reference implementations used as test oracles (public, so users can check us too)."""

from .oracles import naive_per_sample_grads

__all__ = ["naive_per_sample_grads"]
