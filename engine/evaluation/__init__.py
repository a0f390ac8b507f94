"""Evaluation: is synthetic data like the real data, diverse, free of copies, useful?"""
