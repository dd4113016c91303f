"""The harness: a local server for tests and benchmarks, and the failover drills.

- localserver: ``tokpay serve`` as a child process in its own session;
- workload: the drill's writers and readers through the gateway;
- audit: the one ledger audit of drills and crash tests;
- history: the record of every operation the drill's clients invoked, as JSON lines;
- history_check: that record against each account's order in the ledger;
- outage: when writes resumed, the longest outage, rates per phase;
- nemesis: pick a victim in a local cluster, kill it, restart it;
- report: DrillReport, its verdict and its printed form;
- drill: one drill, load + nemesis + audit + report.

The harness builds on tokpay.cluster; no product package imports it.
"""
