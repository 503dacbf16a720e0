"""Evaluation: the periodic evaluator (classification, few-shot and kNN
monitors, pictures), few-shot ridge regression, kNN and logistic regression."""
