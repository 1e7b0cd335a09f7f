"""``wirestream ui``: the HTML report, live, from a running pipeline's output topics."""

from __future__ import annotations

import argparse
import sys

from wirestream.commands import common
from wirestream.config import Settings
from wirestream.errors import UsageError, WirestreamError

#: the environment variable the view's access token may come from
TOKEN_ENV = "WIRESTREAM_UI_TOKEN"


def add_parser(sub: common.Subparsers, defaults: Settings) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ui", help="the service map, time series and tables, live in a browser",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Serve analyze --html's report, live: a consumer group of its own reads the output topics
(the newest records of each, bounded) and the page redraws every --refresh seconds.
Read-only. Binds to loopback by default; bound elsewhere it needs an access token
(--token-file; open http://HOST:PORT/?token=TOKEN), HTTPS (--cert/--key), or
--allow-unauthenticated.""",
        epilog="""examples:
  wirestream ui --bootstrap kafka:9092 --registry http://registry:8081        # http://127.0.0.1:8080
  wirestream ui --listen 0.0.0.0:8080 --token-file /run/secrets/ui-token --bootstrap ... --registry ...""")
    common.add_exposure_args(
        p, "127.0.0.1:8080",
        f"require the token read from FILE, as ?token= or 'Authorization: Bearer' (default: ${TOKEN_ENV})",
        "sees every service and connection")
    p.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS",
                   help="how often the page redraws (default: %(default)s)")
    p.add_argument("--from-beginning", action="store_true",
                   help="a new group starts at the topics' oldest records (default: the newest)")
    p.add_argument("--group", default="wirestream-ui", help="consumer group (default: %(default)s)")
    common.add_kafka_args(p, defaults, required=True)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from wirestream.sinks.live_ui import LiveUi
    from wirestream.sinks.prometheus import is_loopback
    from wirestream.sinks.siem import read_token

    host, port = common.listen_address(args.listen, "127.0.0.1:8080")
    if args.refresh <= 0:
        raise UsageError(f"--refresh {args.refresh}: a number of seconds above 0")
    try:
        token = read_token(args.token_file, TOKEN_ENV)
        ui = LiveUi(args.bootstrap, args.registry, host, port, group=args.group,
                    refresh_s=args.refresh, from_beginning=args.from_beginning, token=token, cert=args.cert,
                    key=args.key, allow_unauthenticated=args.allow_unauthenticated)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise WirestreamError(f"cannot serve on {args.listen}: {exc.strerror or exc}") from None
    url = f"{ui.scheme}://{host}:{ui.port}/"
    if token:
        url += "?token=<the token>"  # (never the token itself in a log line)
    print(f"wirestream ui: serving {url}", file=sys.stderr, flush=True)
    if not is_loopback(host):
        print(f"warning: the view is served on {'every address' if host == '0.0.0.0' else host}, not loopback: whoever reaches it "
              f"{'with the token ' if token else ''}sees every service, address and connection",
              file=sys.stderr, flush=True)
    ui.run(stop=common.StopOnSignal())
    return common.EXIT_OK
