"""Evaluation of frozen features: few-shot ridge regression and kNN."""
