"""The web app: server-rendered pages (Jinja2 + htmx) on the gateway's FastAPI service.

It knows HTML, sessions and the user directory; money moves only through the
same ``LedgerClient`` the JSON API uses, and every page acts on the account of
the user in the server-side session, never on an id the browser sends.
"""
