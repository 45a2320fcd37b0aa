"""Triton kernels. Each public launcher has a plain-torch twin in ``ecc_kv`` that is its test oracle.

Depends on torch and triton only, never on ``ecc_kv`` or ``pipeline``.
"""
