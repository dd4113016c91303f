"""The API's routes, one router per resource; ``ROUTERS`` is what the app includes."""

from tokpay.api.routes import accounts, balances, operations, transfers

ROUTERS = (operations.router, accounts.router, balances.router, transfers.router)
