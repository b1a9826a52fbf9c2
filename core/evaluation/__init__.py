"""Evaluation of a frozen backbone: feature extraction, linear and kNN probes, and the supervised
from-scratch baseline they are compared with."""
