"""Gives a freshly bootstrapped Keystone what tether's Keystone tests use, through its REST API.

Usage: keystone_seed.py URL (the versioned API, ending in /v3), with the bootstrap admin's
password in KEYSTONE_ADMIN_PASSWORD (kept off the command line, which any user can read).

Makes project `baremetal`, user `tether` with a random password and the `member` role on it, an
application credential of that user with a random secret, and a service of type
`block-storage` without endpoints (each test adds its own, in a region of its own). Prints
shell assignments (TETHER_KEYSTONE_*) for the tests; secrets included, so send them to a file
only its owner reads.
"""

import json
import os
import secrets
import shlex
import sys
import urllib.error
import urllib.request


class Keystone:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def call(self, method, path, body=None, token=None):
        """Returns the answer's headers and parsed body; any error status raises."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json")
        if token:
            request.add_header("X-Auth-Token", token)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                raw = answer.read()
                return answer.headers, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            sys.exit(f"keystone_seed: {method} {path}: {e.code} {detail}")

    def password_token(self, user, password, project):
        """A token scoped to `project`, for a user and project of the default domain."""
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": user,
                            "domain": {"id": "default"},
                            "password": password,
                        }
                    },
                },
                "scope": {"project": {"name": project, "domain": {"id": "default"}}},
            }
        }
        headers, _ = self.call("POST", "/auth/tokens", body)
        return headers["X-Subject-Token"]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    keystone = Keystone(sys.argv[1])
    admin = keystone.password_token("admin", os.environ["KEYSTONE_ADMIN_PASSWORD"], "admin")

    _, roles = keystone.call("GET", "/roles?name=member", token=admin)
    member = roles["roles"][0]["id"]
    _, project = keystone.call(
        "POST",
        "/projects",
        {"project": {"name": "baremetal", "domain_id": "default"}},
        admin,
    )
    project_id = project["project"]["id"]
    password = secrets.token_urlsafe(24)
    _, user = keystone.call(
        "POST",
        "/users",
        {"user": {"name": "tether", "domain_id": "default", "password": password}},
        admin,
    )
    user_id = user["user"]["id"]
    keystone.call("PUT", f"/projects/{project_id}/users/{user_id}/roles/{member}", token=admin)

    # Only a user can make its own application credentials: with its own token, scoped to
    # the project the credential will act in.
    own = keystone.password_token("tether", password, "baremetal")
    app_secret = secrets.token_urlsafe(24)
    _, credential = keystone.call(
        "POST",
        f"/users/{user_id}/application_credentials",
        {"application_credential": {"name": "tether-conductor", "secret": app_secret,
                                    "roles": [{"name": "member"}]}},
        own,
    )
    _, service = keystone.call(
        "POST",
        "/services",
        {"service": {"type": "block-storage", "name": "cinder"}},
        admin,
    )

    values = {
        "PROJECT_ID": project_id,
        "USER_ID": user_id,
        "PASSWORD": password,
        "APP_CRED_ID": credential["application_credential"]["id"],
        "APP_CRED_SECRET": app_secret,
        "SERVICE_ID": service["service"]["id"],
    }
    for name, value in values.items():
        print(f"TETHER_KEYSTONE_{name}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
