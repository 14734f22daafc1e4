"""A small shop back end: the code under test of the leak-check evaluation suite.

Each module is one family of things a request handler does (caches, logging, signals,
threads, tasks, HTTP and database clients, buffers, errors, files). Leaky functions keep
something per call; each line that allocates what is kept carries a ``# LEAK: <name>``
comment, where ``test_<name>`` is the suite test that must fail naming that line. Every
other function is clean.
"""
