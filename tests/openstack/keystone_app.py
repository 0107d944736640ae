"""Keystone's public API as a WSGI application for gunicorn.

Keystone parses its configuration options from sys.argv, where gunicorn's own options would
be refused: it gets an empty command line (the worker has parsed its own long before), and its
configuration from OS_KEYSTONE_CONFIG_FILES.
"""

import sys

del sys.argv[1:]

from keystone.wsgi.api import application  # noqa: E402,F401
