#!/opt/glmtts/bin/python
"""The image's HEALTHCHECK: exit 0 when the service's /readyz answers 200, else 1 (Docker's
contract: 0 healthy, 1 unhealthy). Docker keeps what this prints in
`docker inspect --format '{{json .State.Health}}'`, so it prints /readyz's body: "loading",
"draining" or the reason.

The address comes from the same configuration the service reads (GLMTTS_* environment and
the mounted file), so a port moved by either is followed; a wildcard bind is probed on
loopback. No proxy: HTTP(S)_PROXY set for the service's outbound alerts must not carry a
probe of 127.0.0.1.
"""

import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0  # below the HEALTHCHECK --timeout (4 s), so a slow answer is reported, not killed


def main():
    from glmtts import config
    from glmtts.errors import ConfigError

    try:
        settings = config.load()
    except ConfigError as e:
        print("config: %s" % e)
        return 1
    url = config.service_url(settings.server.host, settings.server.port) + "/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as r:
            print("%s %d %s" % (url, r.status, r.read(500).decode("utf-8", "replace")))
            return 0 if r.status == 200 else 1
    except urllib.error.HTTPError as e:  # 503: loading, draining, degraded, failed
        print("%s %d %s" % (url, e.code, e.read(500).decode("utf-8", "replace")))
        return 1
    except OSError as e:  # refused (not listening yet, or gone), timeout
        print("%s %s" % (url, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
