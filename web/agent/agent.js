// The agent panel: signs in, follows the agent's own live call (or one named in ?call=),
// and shows it through CallView. "Play demo call" starts the bundled synthetic call as a
// live call of the signed-in agent. Another agent's call is refused by the server (403 /
// close 1008) and the page then shows nothing of it. A call the server no longer knows
// (close 4404, e.g. it ended while the server was restarting) is the agent's own: what was
// shown of it stays, with a note.
//
// A call cut off mid-conversation (the server stopped or died, the audio connection dropped)
// and reconnected by the telephony under the same id runs on as a new leg, `X~2`
// (coach/calls.py). When the panel follows such a leg by itself, the part before the cut stays
// above it, frozen (its cards can still be rated), with a divider saying when the call resumed: it is the same
// conversation. A call ended by a hang-up, or one the agent opens by hand, starts clean.
"use strict";
const $ = (id) => document.getElementById(id);
const Panel = {
  view: null,
  stream: null,
  callId: null,
  finished: new Set(), // calls that ended here: never followed again
  cutOff: null, // why the watched call was cut off (see cutOffCause), null while live or ended by a hang-up
  me: null,
};

// The ends after which the telephony may reconnect the same conversation (the call's people
// did not hang up): what the divider says about each. Ends by a party (`end`, `stop`,
// `hangup`, `end_of_file`) or by the server's policy (`max_length`, `idle_timeout`) are not:
// a later use of the id is taken for another conversation and starts clean.
const CUT_OFF = {
  interrupted: "the server stopped",
  shutdown: "the server shut down",
  disconnect: "the connection dropped",
  missing: "the server lost it", // no call_end at all: the call vanished in a restart
};

function cutOffCause(reason) {
  if (Object.hasOwn(CUT_OFF, reason)) return CUT_OFF[reason];
  return typeof reason === "string" && reason.startsWith("error:") ? "an error" : null;
}

function clockTime(startedAt) {
  const when = startedAt == null ? new Date() : new Date(typeof startedAt === "number" ? startedAt * 1000 : startedAt);
  return when.toLocaleTimeString([], { hour12: false });
}

// The watched call goes on as `callId`: its view moves up, frozen, with the divider under it.
function keepEarlierPart(callId, startedAt) {
  const view = Panel.view;
  view.freeze();
  view.lines.removeAttribute("id"); // #transcript is the live part's
  view.root.classList.replace("live", "earlier");
  view.root.prepend(h("h2", { class: "part-heading", text: `Earlier part: ${Panel.callId} (cut off: ${Panel.cutOff})` }));
  const earlier = $("earlier");
  earlier.append(view.root, h("p", {
    class: "leg-divider", role: "note",
    text: `Call resumed at ${clockTime(startedAt)} after ${Panel.cutOff}, as ${callId}; the earlier part is above.`,
  }));
  earlier.hidden = false;
  earlier.scrollTop = earlier.scrollHeight; // the end of the earlier part, next to the live one
  Panel.view = null; // kept, not destroyed by stopWatching
}

function clearEarlierParts() {
  $("earlier").replaceChildren();
  $("earlier").hidden = true;
}

function setStatus(text) { $("status").textContent = text; }

// `transient`: a notice about a request (the demo call), cleared by the next call's start
// or end; others (a call that vanished, one moved to another agent) stay until replaced.
function notice(text, { transient = false } = {}) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
  Panel.transientNotice = Boolean(text) && transient;
}

function clearTransientNotice() {
  if (Panel.transientNotice) notice("");
}

// The call this tab showed last, for a reload after it ended: the wrap-up (its cards and
// ratings, the outcome question) comes back instead of an empty "waiting" page, for as long
// as the server can replay the call. Per tab and per signed-in agent; a new tab (or a sign-in
// again) gets the agent's last call of any tab for LAST_CALL_ANY_TAB_MS (an outside UI audit:
// a new tab after the call showed "Waiting for your next call…", the wrap-up out of reach).
const LAST_CALL = "coach.agent.last-call";
const LAST_CALL_ANY_TAB_MS = 30 * 60 * 1000;

function rememberCall(callId) {
  const saved = JSON.stringify({ user: Panel.me?.user, callId, at: Date.now() });
  try {
    sessionStorage.setItem(LAST_CALL, saved);
    localStorage.setItem(LAST_CALL, saved);
  } catch { /* storage off: a reload starts empty, as before */ }
}

function rememberedCall() {
  const read = (store, maxAge) => {
    const saved = JSON.parse(store.getItem(LAST_CALL) || "null");
    if (!saved || saved.user !== Panel.me?.user) return null;
    return maxAge === null || Date.now() - (saved.at || 0) <= maxAge ? saved.callId : null;
  };
  try {
    return read(sessionStorage, null) || read(localStorage, LAST_CALL_ANY_TAB_MS);
  } catch { return null; }
}

function stopWatching() {
  if (Panel.stream) Panel.stream.close();
  if (Panel.view) Panel.view.destroy();
  Panel.stream = null;
  Panel.view = null;
  Panel.callId = null;
  Panel.cutOff = null;
}

// `auto`: the panel follows the agent's new call by itself (poll), which may be the next leg
// of the call it shows; `startedAt`: when that call started (the call list's `started_at`).
function watch(callId, { auto = false, startedAt = null, restored = false } = {}) {
  if (!callId) return;
  rememberCall(callId);
  if (auto && Panel.view && Panel.cutOff && isLaterLeg(callId, Panel.callId)) keepEarlierPart(callId, startedAt);
  else clearEarlierParts();
  stopWatching();
  if (!auto) notice("");
  else clearTransientNotice();
  Panel.callId = callId;
  $("call").value = callId;
  const root = h("div", { class: "call-part live" });
  $("view").replaceChildren(root);
  const view = new CallView(root, { callId });
  view.lines.id = "transcript";
  Panel.view = view;
  setStatus(`Connecting to ${callId}…`);
  Panel.stream = new EventStream(callId, {
    onEvent: (ev) => {
      view.handle(ev);
      if (ev.type === "call_end") {
        clearTransientNotice();
        Panel.finished.add(callId);
        Panel.cutOff = cutOffCause(ev.reason);
        if (ev.reason === "interrupted" || ev.reason === "shutdown") {
          setStatus(`Call ${callId} was cut off when the server stopped.`);
        }
        else if (typeof ev.duration_s === "number") setStatus(`Call ${callId} ended after ${Math.round(ev.duration_s)} s.`);
        else setStatus(`Call ${callId} ended.`);
      }
    },
    onStatus: (s) => {
      view.connection(s === "live", s === "quiet" ? "no updates" : "not connected");
      if (s === "live" && !view.ended) setStatus(`Watching ${callId}`);
      if (s === "reconnecting") setStatus(`Connection lost; reconnecting to ${callId}…`);
      if (s === "quiet" && !view.ended) setStatus(`No updates from ${callId} for a few seconds; checking the connection…`);
      if (s === "offline" && !view.ended) setStatus(`This computer is offline; ${callId} resumes when it is back.`);
    },
    onEnded: () => { Panel.finished.add(callId); if (!view.ended) setStatus(`Call ${callId} ended.`); },
    onMissing: () => {
      Panel.finished.add(callId);
      if (restored) {
        // The call shown before a reload is no longer kept anywhere: nothing to say.
        stopWatching();
        $("view").replaceChildren();
        setStatus("Waiting for your next call…");
        return;
      }
      // Not a permission problem: the transcript and cues already shown stay. The call is
      // over for this panel, so the next poll follows the agent's next call.
      if (!view.ended) Panel.cutOff = CUT_OFF.missing;
      view.finish();
      notice(missingText(callId, Panel.stream));
      setStatus("Waiting for your next call…");
    },
    onRefused: (err) => {
      // Nothing of a call we may not see stays on screen (an expired token never gets here:
      // stream.js sends it to the sign-in form).
      stopWatching();
      clearEarlierParts();
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
      const all = (await r.json()).calls;
      const calls = all
        .filter((c) => c.meta && c.meta.agent_id === Panel.me.user) // this panel: my calls
        .sort((a, b) => b.started_at - a.started_at);
      renderCalls(calls);
      const idle = !Panel.callId || Panel.finished.has(Panel.callId);
      // The call shown went on as a later leg (the same id streamed again, a reconnect):
      // follow that first, also for a call opened by hand (?call=demo, then demo~2).
      const nextLeg = Panel.callId && all
        .filter((c) => isLaterLeg(c.call_id, Panel.callId) && !Panel.finished.has(c.call_id))
        .sort((a, b) => leg(b.call_id).n - leg(a.call_id).n)[0];
      const next = nextLeg || calls.find((c) => !Panel.finished.has(c.call_id));
      // Follow the agent's new call by itself.
      if (idle && next) watch(next.call_id, { auto: true, startedAt: next.started_at });
    }
  } catch (err) {
    /* the server is restarting: try again on the next tick */
  }
  setTimeout(poll, 2000);
}

async function playDemo() {
  const button = $("demo");
  const refocus = keepFocus(button);
  button.disabled = true;
  notice("");
  try {
    const speed = parseFloat(new URLSearchParams(location.search).get("demo_speed") || "1");
    const r = await Auth.api("/api/demo/calls", { method: "POST", json: { speed } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { notice(`Demo call: ${body.detail || r.status}`, { transient: true }); return; }
    watch(body.call_id);
    setStatus(`Demo call ${body.call_id} playing (${Math.round(body.duration_s)} s)…`);
  } finally {
    button.disabled = false;
    refocus();
  }
}

(async () => {
  Panel.me = await Auth.require({ signinRoot: $("signin"), appRoot: $("app"), pageName: "agent panel", badgeRoot: $("user") });
  $("demo").addEventListener("click", playDemo);
  $("connect").addEventListener("submit", (e) => { e.preventDefault(); watch($("call").value.trim()); });
  const wanted = new URLSearchParams(location.search).get("call");
  if (wanted) watch(wanted);
  else if (rememberedCall()) watch(rememberedCall(), { restored: true });
  poll();
})();
