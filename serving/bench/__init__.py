"""``python -m serving.bench {latency,http,accuracy}``: the numbers behind the deployment claims.

- ``latency``: in-process p50/p90/p99 per model x backend x input size x batch, ORT-vs-eager and
  student-vs-teacher speedups, and the student's achieved GFLOP/s against this machine's measured
  matrix-multiply rate;
- ``http``: bounded concurrent load on a loopback server (p50/p99, throughput, status counts, the
  server's peak RSS), with and without micro-batching, the HTTP overhead over in-process inference,
  an overload mode (4x the queue capacity: only 200/503, bounded memory) and a soak mode
  (``--soak MINUTES``: valid, malformed, slow-body and oversize requests at a bounded rate, RSS
  over time, the valid requests' p99; exit status 3 on any 5xx);
- ``accuracy``: student vs teacher mIoU through the same runtimes, with per-class IoU and latency.

Every command writes ``<name>.json`` (with the command line and machine info), ``<name>.md`` (also
printed) and ``<name>.png`` into ``--out`` (default ``runs/default/bench``).
"""
