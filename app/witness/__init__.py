"""``refgate-server witness``: a C2SP tlog-witness, run apart from the gateway.

``protocol`` parses submissions (pure), ``store`` keeps the latest cosigned
checkpoint per log in the witness's own database, ``service`` is the HTTP
service and its command line.
"""
