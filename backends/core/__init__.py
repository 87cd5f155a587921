"""The Django-free core: gallery format, hardware, resolution, OCI, extraction, installer.

Nothing here imports Django or ``backends.models`` (tests/test_architecture.py).
"""
