"use strict";
// What the driver scripts share (resume.js, crowd.js; scenario.js takes withTimeout): commands
// as JSON lines on stdin (the first is the config), one JSON object a line on stdout, a failure
// as {"error": ...} with exit 1, and a promise with a deadline.

const readline = require("readline");

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(err) {
  emit({ error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// handlers.start(config) for the first line, then handlers[msg.cmd](msg) for each later one;
// onClose() when stdin ends, then exit 0.
function drive(handlers, onClose) {
  const lines = readline.createInterface({ input: process.stdin });
  let started = false;
  lines.on("line", (line) => {
    if (!line.trim()) return;
    let msg;
    try { msg = JSON.parse(line); } catch (err) { return fail(err); }
    const handler = started ? handlers[msg.cmd] : handlers.start;
    started = true;
    if (!handler) return fail(new Error(`unknown command ${line}`));
    Promise.resolve().then(() => handler(msg)).catch(fail);
  });
  lines.on("close", () => { onClose(); process.exit(0); });
}

module.exports = { drive, emit, fail, withTimeout };
