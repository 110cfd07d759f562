"""A threaded static file server on 127.0.0.1 that answers requests for some files late.

python slow_http.py DIRECTORY PORT DELAY_SECONDS NAME [NAME ...]
"""

import functools
import sys
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class SlowHandler(SimpleHTTPRequestHandler):
    slow: set[str] = set()
    delay = 0.0

    def do_GET(self):
        if self.path.rsplit("/", 1)[-1] in self.slow:
            time.sleep(self.delay)
        super().do_GET()

    def log_message(self, *args):
        pass


def main() -> None:
    directory, port, delay, *names = sys.argv[1:]
    SlowHandler.slow, SlowHandler.delay = set(names), float(delay)
    handler = functools.partial(SlowHandler, directory=directory)
    ThreadingHTTPServer(("127.0.0.1", int(port)), handler).serve_forever()


if __name__ == "__main__":
    main()
