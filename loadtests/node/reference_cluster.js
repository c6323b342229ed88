// peer-bench's Node reference server (reference_server.js) in WORKERS processes on one port, with
// node:cluster, for a hold past one process's open-file limit (bench_idle.py --processes). The
// primary accepts each connection and hands it to a worker, round-robin, and keeps no descriptor
// of it; websocket-only clients need no sticky routing (a connection stays with its worker).
//
//   WORKERS=3 REFERENCE=/path/to/reference_server.js PORT=... BENCH_SECRET=... node reference_cluster.js
//
// Prints "cluster: N workers listening" once every worker listens. The workers get what
// reference_server.js takes (PORT, BENCH_SECRET, PING_MS, PING_TIMEOUT_MS, REDIS_URL).
"use strict";
const cluster = require("node:cluster");

const workers = Math.max(1, Number(process.env.WORKERS) || 1);
if (cluster.isPrimary) {
  let listening = 0;
  cluster.on("listening", () => {
    if (++listening === workers) console.log(`cluster: ${workers} workers listening`);
  });
  cluster.on("exit", (worker, code, signal) => {
    console.error(`cluster: worker ${worker.process.pid} exited (${code ?? signal})`);
    process.exitCode = 1;
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers)) worker.process.kill("SIGTERM");
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  require(process.env.REFERENCE);
}
