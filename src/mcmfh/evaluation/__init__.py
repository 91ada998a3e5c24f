"""Evaluation: metrics (tie-aware mAP, paired recall), code health, the evaluator of a fitted method, two-stage and
study modes, reports."""
