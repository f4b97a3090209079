// The agent panel: signs in, follows the agent's own live call (or one named in ?call=),
// and shows it through CallView. "Play demo call" starts the bundled synthetic call as a
// live call of the signed-in agent. Another agent's call is refused by the server (403 /
// close 1008) and the page then shows nothing of it. A call the server no longer knows
// (close 4404, e.g. it ended while the server was restarting) is the agent's own: what was
// shown of it stays, with a note.
"use strict";
const $ = (id) => document.getElementById(id);
const Panel = {
  view: null,
  stream: null,
  callId: null,
  finished: new Set(), // calls that ended here: never followed again
  me: null,
};

function setStatus(text) { $("status").textContent = text; }

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

function stopWatching() {
  if (Panel.stream) Panel.stream.close();
  if (Panel.view) Panel.view.destroy();
  Panel.stream = null;
  Panel.view = null;
  Panel.callId = null;
}

function watch(callId, { auto = false } = {}) {
  if (!callId) return;
  stopWatching();
  if (!auto) notice("");
  Panel.callId = callId;
  $("call").value = callId;
  const view = new CallView($("view"), { callId });
  view.lines.id = "transcript";
  Panel.view = view;
  setStatus(`Connecting to ${callId}…`);
  Panel.stream = new EventStream(callId, {
    onEvent: (ev) => {
      view.handle(ev);
      if (ev.type === "call_end") {
        Panel.finished.add(callId);
        if (ev.reason === "interrupted" || ev.reason === "shutdown") {
          setStatus(`Call ${callId} was cut off when the server stopped.`);
        }
        else if (typeof ev.duration_s === "number") setStatus(`Call ${callId} ended after ${Math.round(ev.duration_s)} s.`);
        else setStatus(`Call ${callId} ended.`);
      }
    },
    onStatus: (s) => {
      if (s === "live" && !view.ended) setStatus(`Watching ${callId}`);
      if (s === "reconnecting") setStatus(`Connection lost; reconnecting to ${callId}…`);
    },
    onEnded: () => { Panel.finished.add(callId); if (!view.ended) setStatus(`Call ${callId} ended.`); },
    onMissing: () => {
      // Not a permission problem: the transcript and cues already shown stay. The call is
      // over for this panel, so the next poll follows the agent's next call.
      Panel.finished.add(callId);
      view.finish();
      notice(`Call ${callId} was not found: it may have ended before the server restarted.`);
      setStatus("Waiting for your next call…");
    },
    onRefused: (err) => {
      // Nothing of a call we may not see stays on screen (an expired token never gets here:
      // stream.js sends it to the sign-in form).
      stopWatching();
      $("view").replaceChildren();
      notice(err.code === "forbidden"
        ? `You are not assigned to call ${callId}.`
        : err.code === "reassigned"
          ? `Call ${callId} was moved to another agent.`
          : `Cannot open call ${callId}: ${err.message || err.code}.`);
      setStatus("Waiting for your next call…");
    },
  });
  renderCalls(Panel.lastCalls || []);
}

function renderCalls(calls) {
  Panel.lastCalls = calls;
  const nav = $("calls");
  nav.hidden = calls.length < 2;
  nav.replaceChildren(...calls.map((c) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `${c.call_id}${c.meta && c.meta.demo ? " (demo)" : ""}`;
    b.setAttribute("aria-current", String(c.call_id === Panel.callId));
    b.addEventListener("click", () => watch(c.call_id));
    return b;
  }));
  if (calls.length > 1) nav.prepend(Object.assign(document.createElement("span"), { textContent: "Your live calls:" }));
}

async function poll() {
  try {
    const r = await Auth.api("/api/calls");
    if (r.ok) {
      const calls = (await r.json()).calls
        .filter((c) => c.meta && c.meta.agent_id === Panel.me.user) // this panel: my calls
        .sort((a, b) => b.started_at - a.started_at);
      renderCalls(calls);
      const idle = !Panel.callId || Panel.finished.has(Panel.callId);
      const next = calls.find((c) => !Panel.finished.has(c.call_id));
      if (idle && next) watch(next.call_id, { auto: true }); // follow the agent's new call by itself
    }
  } catch (err) {
    /* the server is restarting: try again on the next tick */
  }
  setTimeout(poll, 2000);
}

async function playDemo() {
  const button = $("demo");
  button.disabled = true;
  notice("");
  try {
    const speed = parseFloat(new URLSearchParams(location.search).get("demo_speed") || "1");
    const r = await Auth.api("/api/demo/calls", { method: "POST", json: { speed } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { notice(`Demo call: ${body.detail || r.status}`); return; }
    watch(body.call_id);
    setStatus(`Demo call ${body.call_id} playing (${Math.round(body.duration_s)} s)…`);
  } finally {
    button.disabled = false;
  }
}

(async () => {
  Panel.me = await Auth.require({ signinRoot: $("signin"), appRoot: $("app"), pageName: "agent panel", badgeRoot: $("user") });
  $("demo").addEventListener("click", playDemo);
  $("connect").addEventListener("submit", (e) => { e.preventDefault(); watch($("call").value.trim()); });
  const wanted = new URLSearchParams(location.search).get("call");
  if (wanted) watch(wanted);
  poll();
})();
