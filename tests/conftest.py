"""Makes the shared test helpers in ``tests/`` (``layout_reference``) importable."""
