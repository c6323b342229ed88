// The dashboard: takes its admin token from the URL fragment, keeps a live model from
// /admin/live (a snapshot, then deltas) and acts through the admin API.

import { readEvents } from "./stream.js";
import { Model, clearTables, render } from "./view.js";

const TOKEN_KEY = "gamegw.dashboard.token";
const $ = (selector) => document.querySelector(selector);

const ui = {
  rate: {
    connects: $("#rate-connects"), moves: $("#rate-moves"), deliveries: $("#rate-deliveries"),
    p99: $("#rate-p99"), connections: $("#total-connections"),
  },
  instances: $("#instances tbody"),
  connections: $("#connections tbody"),
  rooms: $("#rooms tbody"),
  connectionsCount: $("#connections-count"),
  roomsCount: $("#rooms-count"),
  connectionsPager: $("#connections-pager"),
  roomsPager: $("#rooms-pager"),
  filters: { user: "", room: "", instance: "" },
  pages: { connections: { page: 0 }, rooms: { page: 0 } },
  pageSize: 100,
};

const model = new Model();
let token = takeToken();
let signedOut = false;
let live = false;
let dirty = true;
const aborter = new AbortController();

// The token arrives in the fragment, which no server sees; it moves to this tab's session
// storage (a reload keeps the page) and out of the address bar.
function takeToken() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    history.replaceState(null, "", location.pathname + location.search);
    return fromUrl;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function setStatus(state, text) {
  document.body.dataset.state = state;
  $("#status").textContent = text;
}

function signOut(error) {
  if (signedOut) return;
  signedOut = true;
  live = false;
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  aborter.abort();
  model.clear();
  clearTables(ui);
  $("#live").hidden = true;
  $("#signed-out").hidden = false;
  $("#signed-out-reason").textContent = error ? `${error.code}: ${error.message}` : "no token";
  setStatus("signed-out", "signed out");
}

function onEvent(event, data) {
  if (event === "snapshot") {
    model.load(data);
    live = true;
    $("#live").hidden = false;
    setStatus("live", `live · via ${data.instance}`);
  } else if (event === "delta") {
    model.apply(data);
  } else if (event === "signed_out") {
    signOut(data);
  }
  dirty = true;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function stream() {
  let backoffMs = 500;
  while (!signedOut) {
    setStatus(live ? "reconnecting" : "connecting", live ? "reconnecting…" : "connecting…");
    let result;
    try {
      result = await readEvents("live", token, onEvent, aborter.signal);
    } catch (error) {
      result = { status: 0, error: { code: "network", message: String(error) } };
    }
    if (signedOut) return;
    if (result.status === 401 || result.status === 403) {
      signOut(result.error);
      return;
    }
    live = false;
    if (result.error) setStatus("reconnecting", `${result.error.code}: ${result.error.message} · retrying`);
    await sleep(backoffMs);
    backoffMs = Math.min(backoffMs * 2, 8000);
  }
}

const ACTIONS = {
  kick: {
    ask: (user) => `Kick ${user}? All of their connections close with 4503 kicked (their client must not reconnect).`,
    body: (user) => ({ user, reason: "kicked by an operator" }),
    done: (o) => `kicked ${o.count} connection(s) of ${o.user}`,
  },
  drop: {
    ask: (user) => `Simulate a network drop for ${user}? Their connections are cut without a close; the session waits in grace.`,
    body: (user) => ({ user, block_s: 0 }),
    done: (o) => `dropped ${o.count} connection(s) of ${o.user}`,
  },
  revoke: {
    ask: (user) => `Revoke every token of ${user} issued before now? Their connections close with 4500 and the tokens are refused from now on.`,
    body: (user) => ({ user }),
    done: (o) => `revoked ${o.user}'s tokens; closed ${o.count} connection(s)`,
  },
};

async function act(action, user) {
  const spec = ACTIONS[action];
  if (!spec || !token || !window.confirm(spec.ask(user))) return;
  const result = $("#action-result");
  let response;
  try {
    response = await fetch(action, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(spec.body(user)),
    });
  } catch (error) {
    result.textContent = `${action} ${user}: ${error}`;
    return;
  }
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) {
    signOut(answer.error);
    return;
  }
  if (!response.ok) {
    result.textContent = `${action} ${user} failed: ${answer.error?.code}: ${answer.error?.message}`;
    return;
  }
  const unconfirmed = answer.confirmed === false ? `; not confirmed by ${answer.unconfirmed.join(", ")}` : "";
  result.textContent = spec.done(answer) + unconfirmed;
}

ui.connections.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) act(button.dataset.action, button.closest("tr").dataset.user);
});

for (const name of ["user", "room", "instance"]) {
  $(`#filter-${name}`).addEventListener("input", (event) => {
    ui.filters[name] = event.target.value.trim();
    ui.pages.connections.page = 0;
    ui.pages.rooms.page = 0;
    dirty = true;
  });
}

for (const [pager, state] of [[ui.connectionsPager, ui.pages.connections], [ui.roomsPager, ui.pages.rooms]]) {
  pager.addEventListener("click", (event) => {
    const step = Number(event.target.dataset.step);
    if (step) {
      state.page += step;
      dirty = true;
    }
  });
}

// At most four renders a second, however many deltas arrive; ages move on once a second.
setInterval(() => {
  if (live && dirty) {
    dirty = false;
    render(model, ui);
  }
}, 250);
setInterval(() => { dirty = true; }, 1000);

if (token) stream();
else signOut({ code: "token_missing", message: "open the link that `gamectl dashboard` prints" });
