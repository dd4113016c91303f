"""Operations: run a multi-node TokPay cluster on this machine, or deploy one on real ones.

- errors: ClusterError, the one error raised here;
- sessions: process sessions (start, find every process, stop, SIGKILL, logs);
- ports: free ports (fixed ones below the ephemeral range, and any free one);
- state: the DATA_DIR/cluster.json state file;
- nodes: each node's script, record and environment; the token and Ray temp link;
- probes: the GCS node table (from a child process) and Redis's pid;
- local: LocalCluster, composing the above;
- gateway: the HTTP gateway as a child process or cluster service;
- deploy: the Ray-driver side (join, deploy the controller, ask its status);
- status: the ``cluster status --json`` document;
- single: the single-node ledger of ``tokpay serve`` (private Ray, dev login, gateway);
- scripts/: head.sh, worker.sh, redis.sh (and common.sh), run on every machine.

Nothing here imports Ray at import time, nor tokpay.testing (the harness builds on
this, not the reverse).
"""
