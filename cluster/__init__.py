"""The driver side: the `gobig` command and the Ray orchestration behind it.

This is the only package that imports ray, and it does so lazily so that
commands which never touch a cluster start fast.
"""
