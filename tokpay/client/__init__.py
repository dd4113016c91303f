"""Python client of the TokPay ledger, for the gateway and for Ray client scripts."""

from tokpay.client.ledger import LedgerClient, SyncLedgerClient, connect

__all__ = ["LedgerClient", "SyncLedgerClient", "connect"]
