"""The one error the cluster tooling raises: something did not do what was asked."""


class ClusterError(RuntimeError):
    """The cluster did not do what was asked (start, stop, find a node, read its state)."""
