"""Where Murmur's per-user cache is, resolved exactly as murmur-models' CacheDir does."""

import os


def cache_dir():
    for var, suffix in (("MURMUR_CACHE_DIR", ""), ("XDG_CACHE_HOME", "murmur")):
        if os.environ.get(var):
            return os.path.join(os.environ[var], suffix)
    return os.path.join(os.path.expanduser("~"), ".cache", "murmur")
