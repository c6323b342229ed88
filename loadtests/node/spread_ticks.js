// Preloaded into peer-bench's loadgen.js (NODE_OPTIONS=--require this file) by bench_swarm.py
// --ticks spread: loadgen.js starts every player's move interval in one loop, so all of them move
// in the same millisecond each period. Here each interval starts after a random part of its
// period instead, as gamectl's players do by default, and loadgen.js itself is left as it is.
"use strict";
const setIntervalOriginal = global.setInterval;
const clearIntervalOriginal = global.clearInterval;

global.setInterval = (fn, ms, ...args) => {
  const handle = { inner: null, cleared: false };
  handle.first = setTimeout(() => {
    if (handle.cleared) return;
    handle.inner = setIntervalOriginal(fn, ms, ...args);
    fn(...args);
  }, Math.random() * ms);
  return handle;
};

global.clearInterval = (handle) => {
  if (handle && handle.first !== undefined) {
    handle.cleared = true;
    clearTimeout(handle.first);
    if (handle.inner) clearIntervalOriginal(handle.inner);
  } else {
    clearIntervalOriginal(handle);
  }
};
