"""`glmtts serve`: run the service in the foreground (the same as `python -m service`)."""


def add_parser(sub):
    p = sub.add_parser("serve", help="run the HTTP service + UI in the foreground",
                       description="Run the glmtts service in the foreground on server.host:server.port "
                                   "(the same as `python -m service`). Exit codes: 78 config error, "
                                   "3 engine load failure, 4 port in use.")
    p.set_defaults(func=run)


def run(args):
    from glmtts_service.__main__ import serve

    return serve(args.config)
