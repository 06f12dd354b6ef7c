"""Test plugins: the session-wide leak check, squashfs packages, a real rockerd."""

pytest_plugins = ["leakcheck", "pkgbuild", "daemon", "rockers"]
