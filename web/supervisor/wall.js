// The supervisor wall: every live call the supervisor may see as a tile, sorted by risk;
// escalation alerts with the handoff summary and an acknowledge button; drill-in (the
// agent's live view, read-only, plus cue history and feedback); the post-call summary from
// the store; recent calls; coaching analytics over a date range; sound alerts (sound.js).
//
// Events are folded into an in-memory model as they arrive and painted at most once per
// frame, so 50 busy calls cost one DOM pass per frame, not one per event.
// Views are addressed by the URL fragment: #live, #call/ID, #summary/ID, #history, #analytics.
"use strict";
const $ = (id) => document.getElementById(id);
const URGENCY = { critical: 4, high: 3, medium: 2, low: 1 };
const Wall = {
  me: null,
  calls: new Map(), // call_id -> tile model
  tiles: new Map(), // call_id -> <li>
  dirty: new Set(),
  alertsDirty: false,
  order: [],
  socket: null,
  retry: 0,
  scheduled: false,
  stale: false, // the socket is down: the tiles are what was true when it dropped
  refusal: null, // the error message the server sent before refusing the socket
  drill: null, // {callId, view, stream}
  ackFocus: null, // the escalation whose Acknowledge button had the focus when pressed
  snapshotSeen: false, // the first snapshot is what was open at page load: it plays no sound
  mostUrgent: null, // {n, call, esc}: the open escalations' count and the most urgent one
  tabKeys: false, // the view changes because an arrow key moved along the tabs
};
window.wallStats = { latencies: [], events: 0, paints: 0 };

// -- the model ---------------------------------------------------------------------------
function fold(ev) {
  let c = Wall.calls.get(ev.call_id);
  if (!c) {
    if (ev.type === "call_end" || ev.type === "escalation_ack") return null;
    c = { call_id: ev.call_id, meta: {}, agent_id: null, started_at: Date.now() / 1000, ended_at: null, t: 0,
      valence: null, arousal: null, emotion: null, trend: null, change: null, contact_lost_at: null, last_cue: null, cues: 0, escalations: [] };
    Wall.calls.set(ev.call_id, c);
  }
  if (typeof ev.t_emit === "number") c.t = Math.max(c.t, ev.t_emit);
  switch (ev.type) {
    case "call_start":
      c.meta = ev.meta || {};
      c.agent_id = c.meta.agent_id || null;
      c.ended_at = null; c.end_reason = null; c.change = null; c.contact_lost_at = null;
      break;
    case "call_end":
      // Dated when the call was last heard where the event says so (a call a restart found
      // cut off), else now.
      c.ended_at = Math.min(Date.parse(ev.ended_at || "") / 1000 || Infinity, Date.now() / 1000);
      c.end_reason = ev.reason || null; Wall.alertsDirty = true;
      c.change = (ev.summary && ev.summary.change) || null;
      c.contact_lost_at = null;
      break;
    case "call_contact":
      // This server found the call's own server gone (coach/api/wall_contact.py): the call is
      // not coached, and a minute later the sweep closes it as cut off.
      c.contact_lost_at = ev.lost ? (Date.parse(ev.since || "") / 1000 || Date.now() / 1000) : null;
      if (ev.lost) announce(`Lost contact with the server of call ${ev.call_id}`, false);
      break;
    case "agent_assigned":
      // A supervisor put an agent on the call: the tile names them at once.
      c.agent_id = ev.agent_id || null;
      c.meta = { ...c.meta, agent_id: c.agent_id };
      break;
    case "call_update":
      c.valence = ev.valence; c.arousal = ev.arousal; c.emotion = ev.emotion;
      c.trend = ev.trend || null;
      if (ev.last_cue) c.last_cue = ev.last_cue;
      break;
    case "cue":
      c.cues += 1;
      c.last_cue = { seq: ev.seq, cue: ev.cue, title: ev.title, priority: ev.priority, severity: ev.severity, t_emit: ev.t_emit };
      break;
    case "escalation":
      SoundAlerts.escalations([{ key: escalationKey(ev.call_id, ev.seq), urgency: ev.urgency, open: true }]);
      if (!c.escalations.some((e) => e.seq === ev.seq)) {
        c.escalations.push({ seq: ev.seq, reason: ev.reason, urgency: ev.urgency, cue: ev.cue, detail: ev.detail, summary: ev.summary, t_emit: ev.t_emit, acknowledged_by: null });
        announce(`Escalation, ${ev.urgency}: ${REASONS[ev.reason] || ev.reason}, call ${ev.call_id}`, ev.urgency === "critical" || ev.urgency === "high");
      }
      Wall.alertsDirty = true;
      break;
    case "escalation_ack": {
      const e = c.escalations.find((x) => x.seq === ev.seq);
      if (e) e.acknowledged_by = ev.by || "someone";
      Wall.alertsDirty = true;
      break;
    }
    default: break;
  }
  return c;
}

// One escalation, for the sound alerts: the same through reconnects and snapshots.
function escalationKey(callId, seq) { return `${callId}#${seq}`; }

// The escalations a snapshot brings; the first one is what was already open at page load.
function soundSnapshot(calls) {
  const list = calls.flatMap((c) => (c.escalations || []).map((e) => (
    { key: escalationKey(c.call_id, e.seq), urgency: e.urgency, open: !e.acknowledged_by })));
  SoundAlerts.escalations(list, !Wall.snapshotSeen);
  Wall.snapshotSeen = true;
}

function openEscalations(c) { return c.escalations.filter((e) => !e.acknowledged_by); }

// Higher is riskier: crisis and open escalations first, then how negative and aroused the
// customer is and whether it is getting worse. Ended calls sink to the bottom.
function risk(c) {
  if (c.ended_at) return -1000 + (c.started_at || 0) / 1e10;
  let r = 0;
  for (const e of c.escalations) {
    const u = URGENCY[e.urgency] || 1;
    r = Math.max(r, e.acknowledged_by ? 20 * u : 100 * u + (e.reason === "crisis_indicators" ? 100 : 0));
  }
  if (c.last_cue && (c.last_cue.severity === "critical" || c.last_cue.cue === "crisis")) r = Math.max(r, 500);
  if (typeof c.valence === "number") r += (0 - c.valence) * 40;
  if (typeof c.arousal === "number" && typeof c.valence === "number" && c.valence < 0) r += c.arousal * 20;
  if (c.trend === "worsening") r += 10;
  return r;
}

// One verdict per question, as the server gives it (coach/signals/state.py): while the call
// is live, where the mood is heading now; once it ended, how it ended against how it started
// (the same verdict as the post-call summary and the analytics).
const CHANGE_WORDS = { better: "ended better than it started", worse: "ended worse than it started", same: "about the same as it started" };
// "Better" of a call that ended on "I'm going to kill myself tonight" read as a call that went
// well (an outside UI audit): a caller still upset at the end is said to be.
const STILL_UPSET = -0.3;
function changeWords(change, endValence) {
  const upset = typeof endValence === "number" && endValence <= STILL_UPSET;
  if (change === "better" && upset) return "ended less upset than it started, still upset";
  if (change === "same" && upset) return "upset from start to end";
  return CHANGE_WORDS[change] || "";
}
function moodWord(c) {
  if (c.ended_at) return c.change ? changeWords(c.change, c.valence) : "";
  return c.trend || "";
}

function riskClass(c) {
  if (c.ended_at) return "ended";
  const open = openEscalations(c);
  if (open.some((e) => e.urgency === "critical") || (c.last_cue && c.last_cue.severity === "critical")) return "risk-critical";
  if (open.length || (typeof c.valence === "number" && c.valence < -0.5)) return "risk-high";
  if (typeof c.valence === "number" && c.valence < -0.15) return "risk-elevated";
  return "risk-calm";
}

// -- painting ----------------------------------------------------------------------------
function schedule() {
  if (Wall.scheduled) return;
  Wall.scheduled = true;
  const run = () => { if (Wall.scheduled) { Wall.scheduled = false; paint(); } };
  requestAnimationFrame(run);
  setTimeout(run, 100); // rAF is paused in hidden tabs; the wall must still keep up
}

function paint() {
  for (const id of Wall.dirty) paintTile(id);
  Wall.dirty.clear();
  const order = [...Wall.calls.values()].sort((a, b) => risk(b) - risk(a) || a.started_at - b.started_at).map((c) => c.call_id);
  if (order.join("\n") !== Wall.order.join("\n")) {
    // Only the tiles out of place move: moving a tile takes the focus off a button in it.
    const list = $("tiles");
    const active = document.activeElement;
    order.forEach((id, i) => {
      const li = Wall.tiles.get(id);
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    });
    if (active && active !== document.activeElement && list.contains(active)) active.focus({ preventScroll: true });
    Wall.order = order;
  }
  const live = [...Wall.calls.values()].filter((c) => !c.ended_at).length;
  // Ended calls keep their tile a while: the count says so, or "1" would head two tiles.
  const ended = Wall.calls.size - live;
  $("call-count").textContent = ended ? `${live}; ${ended} just ended` : String(live);
  $("no-calls").hidden = Wall.calls.size > 0;
  if (Wall.alertsDirty) { paintAlerts(); Wall.alertsDirty = false; }
  const now = Date.now() / 1000;
  for (const t of Wall.pendingLatency || []) window.wallStats.latencies.push(now - t);
  Wall.pendingLatency = [];
  window.wallStats.paints += 1;
}

function lostContact(c) { return !c.ended_at && Boolean(c.contact_lost_at); }

function clock(epochS) {
  return new Date(epochS * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

const LOST_TEXT = "Lost contact with the server running this call: nothing new is heard or coached; it will be closed as cut off.";

function paintTile(id) {
  if (Wall.drill && Wall.drill.callId === id) {
    showDrillAgent(id); // the snapshot, a reassignment
    const c = Wall.calls.get(id);
    const status = $("drill-status");
    if (c && lostContact(c)) status.textContent = LOST_TEXT;
    else if (status.textContent === LOST_TEXT) status.textContent = "";
  }
  const c = Wall.calls.get(id);
  let li = Wall.tiles.get(id);
  if (!c) { if (li) li.remove(); Wall.tiles.delete(id); return; }
  if (!li) {
    // The button stays the same element from paint to paint (only its label and action
    // change): rebuilt, it would take the keyboard focus with it on every update.
    li = h("li", { "data-call": id }, h("div", { class: "tile-body" }),
      h("button", { type: "button", class: "open", "aria-describedby": `tile-${id}`, onclick: () => {
        const ended = Wall.calls.get(id)?.ended_at;
        location.hash = `#${ended ? "summary" : "call"}/${encodeURIComponent(id)}`;
      } }));
    Wall.tiles.set(id, li);
    $("tiles").append(li);
  }
  li.className = `tile ${riskClass(c)}${lostContact(c) ? " lost-contact" : ""}`;
  const open = openEscalations(c);
  const headId = `tile-${id}`;
  const mood = c.emotion
    ? h("p", { class: "mood" }, `${c.emotion}`,
      h("span", { class: "valence-bar", role: "img", "aria-label": `valence ${c.valence.toFixed(2)}` },
        h("i", { style: `left:calc(${((c.valence + 1) / 2) * 100}% - 2px)` })),
      h("span", { class: "trend", text: moodWord(c) }))
    : h("p", { class: "mood muted", text: "no customer speech yet" });
  li.querySelector(".tile-body").replaceChildren(...[
    h("h3", { id: headId }, h("span", { text: c.agent_id ? `Agent ${c.agent_id}` : "Unassigned" }), h("span", { class: "callid", text: id })),
    mood,
    h("p", { class: "meta" }, h("span", { class: "duration", "data-started": String(c.started_at), text: c.ended_at ? endWord(c) : fmtTime(Date.now() / 1000 - c.started_at) }), ` · ${c.cues} cue${c.cues === 1 ? "" : "s"}`),
    h("p", { class: "lastcue", text: c.last_cue ? `Last cue: ${c.last_cue.title || c.last_cue.cue}` : "No cues yet" }),
    lostContact(c)
      ? h("p", { class: "lost", text: `Lost contact with its server at ${clock(c.contact_lost_at)}: not coached now` })
      : null,
    c.escalations.length
      ? h("p", { class: `esc${open.length ? "" : " acked"}`, text: open.length ? `Escalation: ${open.map((e) => e.urgency).join(", ")}` : `Escalation acknowledged by ${[...new Set(c.escalations.map((e) => e.acknowledged_by))].join(", ")}` })
      : null,
  ].filter(Boolean));
  const button = li.querySelector("button.open");
  const label = c.ended_at ? "Post-call summary" : "Open call";
  if (button.textContent !== label) button.textContent = label;
}

const BASE_TITLE = document.title;

// Alert cards are kept from paint to paint (a rebuild would take the keyboard focus off the
// Acknowledge button a supervisor is about to press); only the cards that come or go change.
const alertCards = new Map(); // escalationKey -> <li>

function paintAlerts() {
  const open = [];
  for (const c of Wall.calls.values()) for (const e of openEscalations(c)) open.push([c, e]);
  open.sort((a, b) => (URGENCY[b[1].urgency] || 0) - (URGENCY[a[1].urgency] || 0) || (a[1].t_emit || 0) - (b[1].t_emit || 0));
  const list = $("alerts");
  const active = document.activeElement;
  const before = [...list.children];
  const focusAt = before.findIndex((li) => li.contains(active) || li.dataset.key === Wall.ackFocus);
  const keys = new Set();
  open.forEach(([c, e], i) => {
    const key = escalationKey(c.call_id, e.seq);
    keys.add(key);
    let li = alertCards.get(key);
    if (!li) { li = alertCard(c, e); alertCards.set(key, li); }
    li.querySelector(".alert-meta").textContent = alertMeta(c, e);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  for (const [key, li] of alertCards) if (!keys.has(key)) { li.remove(); alertCards.delete(key); }
  if (focusAt >= 0) {
    const kept = before[focusAt];
    if (kept.isConnected) {
      if (kept.contains(active) && document.activeElement !== active) active.focus({ preventScroll: true });
    } else {
      // Its escalation was acknowledged: the focus goes on to the alert now in its place.
      const next = list.children[Math.min(focusAt, list.children.length - 1)];
      const target = next ? next.querySelector("button.ack") : $("alerts-h");
      if (!next) target.tabIndex = -1;
      target.focus({ preventScroll: true });
    }
  }
  if (!alertCards.has(Wall.ackFocus)) Wall.ackFocus = null; // an acknowledgement still on its way keeps it
  $("alert-count").textContent = String(open.length);
  $("alert-count").dataset.n = String(open.length);
  $("no-alerts").hidden = open.length > 0;
  // Seen from another tab too: the open escalations lead the page title.
  document.title = `${open.length ? `(${open.length}) Escalation${open.length > 1 ? "s" : ""} · ` : ""}${BASE_TITLE}`;
  Wall.mostUrgent = open.length ? { n: open.length, call: open[0][0], esc: open[0][1] } : null;
  paintAlertStrip();
}

// The strip over every view but the live one: how many escalations are open, the most urgent
// one's call, and the way back to them.
function paintAlertStrip() {
  const strip = $("alert-strip");
  const top = Wall.mostUrgent;
  const onLive = !$("live").hidden;
  strip.hidden = !top || onLive;
  if (!top) return;
  const { n, call, esc } = top;
  strip.classList.toggle("critical", esc.urgency === "critical");
  strip.querySelector(".alert-strip-text").textContent =
    `${n} open escalation${n > 1 ? "s" : ""}; ${n > 1 ? "the most urgent: " : ""}${esc.urgency} on call ${call.call_id}`
    + ` (${call.agent_id ? `agent ${call.agent_id}` : "unassigned"}, ${REASONS[esc.reason] || esc.reason}).`;
}

// A server stop or crash (coach.store.recovered.CUT_OFF) cut the call off, and its caller may
// still need calling back; any other end is the call's own.
function cutOff(reason) {
  return ["interrupted", "shutdown"].includes(reason);
}

// The figures the verdict ("ended better than it started") is judged on: the mean of up to
// three points at each end of the arc (coach/signals/state.py `arc_change`). The first and
// last points alone contradicted it ("-0.63 -> -0.37 (about the same)": an outside audit).
function arcEnds(arc) {
  const values = arc.map((p) => p[1]);
  const k = Math.min(3, Math.floor(values.length / 2));
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const start = mean(values.slice(0, k)), end = mean(values.slice(-k));
  const what = k > 1 ? `first ${k} turns ${start.toFixed(2)} → last ${k} ${end.toFixed(2)}` : `${start.toFixed(2)} → ${end.toFixed(2)}`;
  return { what, end };
}

// How a stored call ended, in words (the bare reasons read as jargon in a summary).
const END_WORDS = {
  end: "the call ended", hangup: "hung up", disconnect: "the connection dropped",
  stop: "the call ended", end_of_file: "the recording ended", close: "the call ended",
  "close:disconnect": "the connection dropped", handed_over: "moved to another instance",
  interrupted: "cut off (the server stopped)", shutdown: "cut off (the server shut down)",
  idle_timeout: "no audio for too long", max_length: "reached the longest call allowed",
};

function endWord(c) {
  return cutOff(c.end_reason) ? "cut off" : "ended";
}

// An open escalation outlives its call on the wall (up to an hour): say the call is over,
// so nobody tries to reach a caller who has hung up through the agent.
function alertMeta(c, e) {
  const ended = c.ended_at ? ` · call ${endWord(c)} ${new Date(c.ended_at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}` : "";
  return `Call ${c.call_id} · ${c.agent_id ? `agent ${c.agent_id}` : "unassigned"} · ${fmtTime(e.t_emit || 0)} into the call${ended}`;
}

function alertCard(c, e) {
  const s = typeof e.summary === "string" ? { text: e.summary } : (e.summary || {});
  const st = s.state || {};
  const callId = c.call_id, seq = e.seq;
  const headId = `alert-${callId}-${seq}`;
  const status = h("span", { class: "ack-status", role: "status" });
  const facts = [
    ["Raised by", e.detail || null],
    ["Customer", st.emotion ? `${st.emotion}${typeof st.valence === "number" ? ` (valence ${st.valence.toFixed(2)})` : ""}${s.trend ? `, ${s.trend}` : ""}` : null],
    ["Trigger phrases", (s.trigger_phrases || []).map((p) => `“${p}”`).join(", ") || null],
    ["Cues shown", (s.cues_shown || []).map((id) => cueTitles[id] || id).join(", ") || null],
    ["Agent tried", (s.agent_tried || []).join("; ") || null],
  ].filter(([, v]) => v);
  return h("li", { class: `alert urgency-${e.urgency}`, "data-call": callId, "data-seq": String(seq), "data-key": escalationKey(callId, seq), "aria-labelledby": headId },
    h("h3", { id: headId, text: `${e.urgency[0].toUpperCase()}${e.urgency.slice(1)}: ${REASONS[e.reason] || e.reason}` }),
    h("p", { class: "muted alert-meta" }),
    s.text ? h("p", { class: "handoff", text: s.text }) : null,
    facts.length ? h("dl", {}, facts.flatMap(([k, v]) => [h("dt", { text: k }),
      h("dd", k === "Cues shown" ? { class: "cues-shown", "data-ids": s.cues_shown.join(" "), text: v } : { text: v })])) : null,
    h("div", { class: "actions" },
      h("button", { type: "button", class: "primary ack", onclick: (ev) => acknowledge(callId, seq, ev.currentTarget, status) }, "Acknowledge"),
      h("button", { type: "button", onclick: () => { location.hash = `#call/${encodeURIComponent(callId)}`; } }, "Open call"),
      status));
}

// The call and escalation are looked up when the answer comes: a snapshot meanwhile replaces
// the objects the card was built from.
async function acknowledge(callId, seq, button, status) {
  const key = escalationKey(callId, seq);
  if (document.activeElement === button) Wall.ackFocus = key; // kept through the disabled wait
  button.disabled = true;
  status.textContent = "Acknowledging…";
  for (let attempt = 0; attempt < 6; attempt++) {
    const r = await Auth.api(`/api/calls/${encodeURIComponent(callId)}/escalations/${seq}/ack`, { method: "POST" })
      .catch(() => ({ ok: false, status: 0 }));
    if (r.ok) {
      const body = await r.json();
      const c = Wall.calls.get(callId);
      const e = c && c.escalations.find((x) => x.seq === seq);
      if (e) e.acknowledged_by = body.acknowledged_by || Wall.me.user;
      Wall.alertsDirty = true;
      if (c) Wall.dirty.add(callId);
      announce(`Escalation on call ${callId} acknowledged.`);
      schedule();
      return;
    }
    if (r.status !== 404 && r.status !== 503 && r.status !== 0) { status.textContent = `Failed (${r.status}).`; ackFailed(key, button); return; }
    await new Promise((res) => setTimeout(res, 500)); // not stored yet: it will be in a moment
  }
  status.textContent = "Could not acknowledge; try again.";
  ackFailed(key, button);
}

function ackFailed(key, button) {
  button.disabled = false;
  if (Wall.ackFocus === key) { Wall.ackFocus = null; button.focus(); }
}

function announce(text, urgent = false) { $(urgent ? "announce-critical" : "announce").textContent = text; }

setInterval(() => {
  if (Wall.stale) return; // a call's timer would keep running after it may have ended
  const now = Date.now() / 1000;
  for (const span of document.querySelectorAll("#tiles .duration")) {
    const c = Wall.calls.get(span.closest(".tile").dataset.call);
    if (c && !c.ended_at) span.textContent = fmtTime(now - c.started_at);
  }
  dropEndedTiles(now);
}, 1000);

// An ended call leaves the wall when the server's wall would drop it (the snapshot's `keep`,
// coach/api/wall.py): a wall left open all day used to keep every ended tile until a reload.
function keepFor(c) {
  const keep = Wall.keep || {};
  if (c.escalations.some((e) => !e.acknowledged_by)) return keep.open_escalation_s ?? 3600;
  const failed = String(c.end_reason || "").startsWith("error:");
  if (failed && c.valence == null && !c.cues && !c.escalations.length) return keep.failed_s ?? 60;
  return keep.ended_s ?? 600;
}

function dropEndedTiles(now) {
  let dropped = false;
  for (const [id, c] of Wall.calls) {
    if (!c.ended_at || now - c.ended_at <= keepFor(c)) continue;
    if (Wall.drill && Wall.drill.callId === id) continue; // being read: it goes when closed
    Wall.calls.delete(id);
    Wall.dirty.add(id); // paintTile removes its tile
    dropped = true;
  }
  if (dropped) { Wall.alertsDirty = true; schedule(); }
}

// -- the wall's socket ---------------------------------------------------------------------
function connectWall() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = Auth.socketQuery(new URLSearchParams());
  const query = q.toString();
  const socket = new WebSocket(`${proto}://${location.host}/ws/supervisor${query ? `?${query}` : ""}`, Auth.socketProtocols());
  Wall.socket = socket;
  Wall.refusal = null;
  socket.onopen = () => { Wall.retry = 0; $("status").textContent = Wall.stale ? "Reconnected; updating…" : "Live"; };
  socket.onmessage = (m) => {
    if (Wall.socket !== socket) return;
    const ev = JSON.parse(m.data);
    window.wallStats.events += 1;
    if (ev.type === "snapshot") {
      // The whole wall as the server has it now: it replaces everything, stale or not.
      setStale(false);
      $("status").textContent = "Live";
      Wall.keep = ev.keep || null;
      Wall.calls.clear();
      // A call still on the wall keeps its tile (repainted below) and whatever focus is in it.
      const present = new Set(ev.calls.map((c) => c.call_id));
      for (const [id, li] of Wall.tiles) if (!present.has(id)) { li.remove(); Wall.tiles.delete(id); }
      Wall.order = [];
      soundSnapshot(ev.calls);
      for (const c of ev.calls) {
        Wall.calls.set(c.call_id, { ...c, started_at: c.started_at || Date.now() / 1000 });
        Wall.dirty.add(c.call_id);
      }
      Wall.alertsDirty = true;
    } else if (ev.type === "error") {
      Wall.refusal = ev;
      if (ev.code === "unauthorized") return; // the close that follows brings the sign-in form
      $("notice").hidden = false;
      $("notice").textContent = ev.message;
      return;
    } else {
      const c = fold(ev);
      if (!c) return;
      Wall.dirty.add(c.call_id);
      if (typeof ev.t_wall === "number") (Wall.pendingLatency ||= []).push(ev.t_wall);
      if (Wall.drill && Wall.drill.callId === ev.call_id && ev.type === "cue") refreshCueHistory(500);
      if (ev.type === "call_start") offerLaterLeg(ev.call_id);
    }
    schedule();
  };
  socket.onclose = (e) => {
    if (Wall.socket !== socket) return;
    const refusal = Wall.refusal;
    Wall.refusal = null;
    if (e.code === 1008) {
      // An expired or invalid token: sign in again, as a REST 401 does (auth.js); the reload
      // also clears the tiles, which nobody is updating any more.
      if (refusal ? refusal.code === "unauthorized" : /token/i.test(e.reason || "")) {
        if (Auth.socketFallback(refusal, socket.url)) { connectWall(); return; } // an older server
        Auth.expired();
        return;
      }
      // Too many walls open for this user: say so, as the server words it.
      $("status").textContent = refusal?.code === "too_many_streams" ? refusal.message : "Not allowed.";
      return;
    }
    setStale(true);
    Wall.retry = Math.min(Wall.retry + 1, 5);
    $("status").textContent = "Connection lost; reconnecting…";
    setTimeout(connectWall, 250 * 2 ** Wall.retry); // the snapshot on reconnect restores everything
  };
}

// While the socket is down no call_end can arrive: the tiles go grey, their timers stop, and
// a banner says so, until the next snapshot replaces them all.
function setStale(stale) {
  Wall.stale = stale;
  $("tiles").classList.toggle("stale", stale);
  $("alerts").classList.toggle("stale", stale); // an alert may have been taken meanwhile
  $("tiles").setAttribute("aria-busy", String(stale));
  $("stale-banner").hidden = !stale;
}

// -- drill-in -----------------------------------------------------------------------------
function openDrill(callId) {
  closeDrill();
  $("drill-h").textContent = `Call ${callId}`;
  const c = Wall.calls.get(callId);
  $("drill-summary").hidden = true;
  $("drill-summary").href = `#summary/${encodeURIComponent(callId)}`;
  $("drill-status").textContent = "";
  $("drill-agent").textContent = "";
  $("assign-form").hidden = true;
  $("assign-status").textContent = "";
  $("assign-form").agent.value = "";
  // The last call's cue history goes too: an unknown call showed the one opened before it.
  $("cue-history").tBodies[0].replaceChildren();
  $("cue-history-empty").hidden = false;
  showDrillAgent(callId);
  if (c && lostContact(c)) $("drill-status").textContent = LOST_TEXT;
  const view = new CallView($("drill-view"), { callId, readOnly: true });
  const stream = new EventStream(callId, {
    onEvent: (ev) => {
      view.handle(ev);
      if (ev.type === "call_end") {
        $("drill-summary").hidden = false;
        $("drill-status").textContent = cutOff(ev.reason) ? "Call cut off when the server stopped." : "Call ended.";
        // Its next leg may have reached the wall before this feed's end did.
        for (const id of Wall.calls.keys()) offerLaterLeg(id);
      }
    },
    onStatus: (s) => {
      view.connection(s === "live", s === "quiet" ? "no updates" : "not connected");
      const status = $("drill-status");
      if (s === "reconnecting") status.textContent = "Reconnecting…";
      if (s === "quiet" && !view.ended) status.textContent = "No updates for a few seconds; checking the connection…";
      if (s === "offline" && !view.ended) status.textContent = "This computer is offline; the call resumes when it is back.";
      if (s === "live" && !view.ended && status.textContent !== LOST_TEXT) status.textContent = "";
    },
    onEnded: () => { $("drill-summary").hidden = false; },
    onMissing: () => {
      // Not a permission problem: what was shown of the call stays.
      view.finish();
      $("drill-status").textContent = missingText(callId, Wall.drill && Wall.drill.stream, ", or find the call under Recent calls");
    },
    onRefused: (err) => {
      view.destroy();
      $("drill-status").textContent = err.code === "forbidden" ? "You may not see this call." : `Cannot open: ${err.message}`;
    },
  });
  Wall.drill = { callId, view, stream, timer: setInterval(() => refreshCueHistory(0), 5000) };
  refreshCueHistory(0);
}

// The drilled-in call dropped and its telephony streamed it again: it runs on as a new leg
// (`id~2`). The agent's panel follows it; the drill-in said "Call ended." over the old leg
// (an outside UI audit). It says where the call went, with a link, and stays where it is.
function offerLaterLeg(callId) {
  const d = Wall.drill;
  if (!d || !isLaterLeg(callId, d.callId)) return;
  const a = h("a", { href: `#call/${encodeURIComponent(callId)}`, text: `open ${callId}` });
  $("drill-status").replaceChildren(`The call continues as ${callId}: `, a, ".");
}

// Who takes the call, from the wall's tile, else the store. A drill-in opened by its URL
// (a link, a reload) comes before the wall's snapshot: it named nobody (an outside audit).
function showDrillAgent(callId, stored) {
  const c = Wall.calls.get(callId);
  if (!c && stored === undefined) return; // nothing known (yet): keep what is shown
  const agent = (c && c.agent_id) || stored;
  $("drill-agent").textContent = agent ? `Agent ${agent}` : "Unassigned";
  // A live call can be given to an agent (the telephony did not say, or someone else should
  // take it): PUT /api/calls/{id}/agent.
  $("assign-form").hidden = !(c && !c.ended_at);
}

function closeDrill() {
  if (!Wall.drill) return;
  Wall.drill.stream.close();
  Wall.drill.view.destroy();
  clearInterval(Wall.drill.timer);
  Wall.drill = null;
}

let cueHistoryTimer = null;
function refreshCueHistory(delayMs) {
  clearTimeout(cueHistoryTimer);
  cueHistoryTimer = setTimeout(async () => {
    if (!Wall.drill) return;
    const callId = Wall.drill.callId;
    const r = await Auth.api(`/api/history/calls/${encodeURIComponent(callId)}`).catch(() => null);
    if (!r || !r.ok || !Wall.drill || Wall.drill.callId !== callId) return;
    const detail = await r.json();
    showDrillAgent(callId, detail.call.agent_id);
    const rows = detail.cues.map((cue) => h("tr", { "data-seq": String(cue.seq) },
      h("td", { text: fmtTime(cue.t_emit || 0) }),
      h("td", { text: cue.cue }),
      h("td", {}, h("strong", { text: cue.title }), h("br"), cue.advice),
      h("td", {}, cue.feedback.length
        ? cue.feedback.map((f) => h("span", { class: `verdict ${f.verdict}`, text: `${VERDICT_LABELS[f.verdict] || f.verdict} (${f.user})` }))
        : h("span", { class: "muted", text: "no feedback yet" }))));
    $("cue-history").tBodies[0].replaceChildren(...rows);
    $("cue-history-empty").hidden = rows.length > 0;
  }, delayMs);
}

// -- post-call summary --------------------------------------------------------------------
async function openSummary(callId) {
  $("summary-h").textContent = `Post-call summary: ${callId}`;
  $("summary-status").textContent = "Loading…";
  $("outcome-form").hidden = true;
  for (const id of ["summary-facts", "summary-cues", "summary-escalations", "summary-transcript"]) $(id).replaceChildren();
  let r = null, d = null;
  // A call that just ended reaches the store within a second or two: wait for its end.
  for (let attempt = 0; attempt < 12; attempt++) {
    r = await Auth.api(`/api/history/calls/${encodeURIComponent(callId)}`).catch(() => null);
    if (r && r.status === 403) break;
    // Unknown here and to the wall (not a call that just ended): no use waiting. An erased
    // call kept the page on "Loading…" for 6 s and 12 requests (an outside audit).
    if (r && r.status === 404 && !Wall.calls.has(callId)) break;
    if (r && r.ok) {
      d = await r.json();
      const live = Wall.calls.get(callId);
      if (d.call.ended_at || (live && !live.ended_at)) break;
    }
    await new Promise((res) => setTimeout(res, 500));
  }
  if (!d) {
    $("summary-status").textContent = r && r.status === 403 ? "You may not see this call." : "This call is not in the history (yet).";
    return;
  }
  const arc = (d.summary && d.summary.arc) || [];
  const change = (d.summary && d.summary.change) || null;
  const ends = change == null ? null : arcEnds(arc);
  const facts = [
    ["Agent", d.call.agent_id || "unassigned"],
    ["Started", new Date(d.call.started_at).toLocaleString()],
    ["Duration", d.call.duration_s != null ? fmtTime(d.call.duration_s) : "still live"],
    ["Ended", END_WORDS[d.call.end_reason] || d.call.end_reason || "–"],
    ["Cues", String(d.cues.length)],
    ["Escalations", String(d.escalations.length)],
    ["Customer valence", change == null ? "–" : `${ends.what} (${changeWords(change, ends.end)})`],
  ];
  $("summary-facts").replaceChildren(...facts.map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))));
  showOutcome(callId, d.call);
  const cueMarks = d.cues.map((c) => ({
    t: (c.evidence && c.evidence.t_end) || c.t_emit || 0, cue: c.cue, title: c.title,
    severity: c.cue === "crisis" ? "critical" : "normal",
  }));
  Charts.arc($("arc"), arc, cueMarks, d.call.duration_s || 0);
  $("summary-cues").replaceChildren(...(d.cues.length ? d.cues.map((c) => h("li", {},
    // At the time of the words it answered, as the arc marks it (the time it was shown comes
    // later: a replay's `--fast` put them a minute apart; an outside audit).
    h("strong", { text: `${fmtTime((c.evidence && c.evidence.t_end) || c.t_emit || 0)} ${c.title}` }), ` (${c.cue}) `,
    c.feedback.map((f) => h("span", { class: `verdict ${f.verdict}`, text: `${VERDICT_LABELS[f.verdict] || f.verdict} (${f.user})` })),
    h("br"), h("span", { class: "muted", text: c.why }))) : [h("li", { class: "muted", text: "No cues on this call." })]));
  $("summary-escalations").replaceChildren(...(d.escalations.length ? d.escalations.map((e) => {
    const text = typeof e.summary === "string" ? e.summary : (e.summary && e.summary.text) || "";
    // When, as the cues above say it (an outside audit could not place an escalation).
    const at = e.t_emit != null ? `${fmtTime(e.t_emit)} ` : "";
    return h("li", {}, h("strong", { text: `${at}${e.urgency}: ${REASONS[e.reason] || e.reason}` }), ` ${text} `,
      h("span", { class: "muted", text: e.acknowledged_by ? `acknowledged by ${e.acknowledged_by}` : "not acknowledged" }));
  }) : [h("li", { class: "muted", text: "None." })]));
  const choices = await CallView.missedChoices();
  const titles = Object.fromEntries(choices.map((c) => [c.cue, c.title]));
  $("summary-transcript").replaceChildren(...d.transcript.map((u) => h("li", { class: `${u.speaker} transcript`, "data-seq": u.seq },
    h("span", { class: "who", text: u.speaker }), h("span", { class: "t", text: fmtTime(u.t_start) }), h("span", { class: "text", text: u.text }),
    u.speaker === "customer" && choices.length ? missedCueControl(callId, u, choices, titles, (d.missed_cues || []).filter((m) => m.utterance_seq === u.seq)) : null)));
  $("summary-status").textContent = "";
}

async function assignAgent(e) {
  e.preventDefault();
  const callId = Wall.drill && Wall.drill.callId;
  const agent = e.currentTarget.agent.value.trim();
  if (!callId || !agent) return;
  $("assign-status").textContent = "Assigning…";
  const r = await Auth.api(`/api/calls/${encodeURIComponent(callId)}/agent`, { method: "PUT", json: { agent_id: agent } }).catch(() => null);
  if (!Wall.drill || Wall.drill.callId !== callId) return;
  const detail = r && !r.ok ? await r.json().catch(() => null) : null;
  $("assign-status").textContent = !r ? "Not assigned (network); try again."
    : r.ok ? (r.status === 202 ? `Sent to the instance that runs the call: ${agent} will be on it.` : `Assigned to ${agent}.`)
      : `Not assigned: ${(detail && detail.detail) || r.status}.`;
}

// How the call ended for the customer (resolved, a callback...), set by its agent or a
// supervisor after the call: stored with it (PUT /api/calls/{id}/outcome).
function showOutcome(callId, call) {
  const form = $("outcome-form");
  form.hidden = !call.ended_at;
  form.dataset.call = callId;
  form.outcome.value = call.outcome || "";
  $("outcome-status").textContent = call.outcome ? `set by ${call.outcome_by}` : "not recorded yet";
}

async function saveOutcome(e) {
  e.preventDefault();
  const form = e.currentTarget, callId = form.dataset.call;
  const value = form.outcome.value.trim();
  const r = await Auth.api(`/api/calls/${encodeURIComponent(callId)}/outcome`, { method: "PUT", json: { outcome: value || null } }).catch(() => null);
  if (form.dataset.call !== callId) return; // another call's summary meanwhile
  if (!r || !r.ok) { $("outcome-status").textContent = `Not saved (${r ? r.status : "network"}); try again.`; return; }
  const call = await r.json();
  $("outcome-status").textContent = call.outcome ? `Saved: set by ${call.outcome_by}` : "Cleared";
}

// A reviewer marks a customer line that should have shown a cue; the reports become new
// playbook examples through scripts/tune_playbook.py --missed.
function missedCueControl(callId, u, choices, titles, reports) {
  const path = `/api/calls/${encodeURIComponent(callId)}/utterances/${u.seq}/missed-cue`;
  const label = (m) => `Missed: ${titles[m.cue] || m.cue} (${m.user})`;
  const status = h("span", { class: "missed-status", role: "status" });
  // Each report shows who made it; its author can take it back.
  const chip = (m) => {
    const el = h("span", { class: "missed-report", "data-cue": m.cue, "data-user": m.user }, h("span", { text: label(m) }));
    if (Wall.me && m.user === Wall.me.user) {
      el.append(h("button", { type: "button", class: "withdraw", text: "×", title: "Take this report back",
        "aria-label": `Take back ${label(m)}`, onclick: async () => {
          const r = await CallView.withdraw(`${path}/${encodeURIComponent(m.cue)}`);
          status.textContent = r.ok ? "Report taken back." : `Not taken back (${r.detail}).`;
          if (r.ok) el.remove();
        } }));
    }
    return el;
  };
  const reported = h("span", { class: "missed-reports" }, reports.map(chip));
  const select = h("select", { "aria-label": `Cue this line should have shown (${fmtTime(u.t_start)})` },
    choices.map((c) => h("option", { value: c.cue, text: c.title })));
  const send = h("button", { type: "button", text: "Report", onclick: async () => {
    send.disabled = true;
    status.textContent = "Sending…";
    const r = await Auth.api(path, { method: "POST", json: { cue: select.value } }).catch(() => null);
    send.disabled = false;
    if (!r || !r.ok) { status.textContent = `Not saved (${r ? r.status : "network"}).`; return; }
    const m = await r.json();
    if (![...reported.children].some((x) => x.dataset.cue === m.cue && x.dataset.user === m.user)) reported.append(chip(m));
    status.textContent = "Saved: it will be proposed as an example of that cue.";
  } });
  return h("details", { class: "missed" }, h("summary", { text: "Missed a cue?" }), select, send, status, reported);
}

// -- recent calls and analytics -------------------------------------------------------------
// The table shows local times, so the date fields mean the browser's local days: a day runs
// from local midnight to the next local midnight (23 or 25 hours across a DST change), sent
// as an ISO instant with the local offset.
const pad2 = (n) => String(n).padStart(2, "0");
function localDay(d) { return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`; }
function localMidnight(day, addDays = 0) {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(y, m - 1, d + addDays);
}
function isoWithOffset(d) {
  const off = -d.getTimezoneOffset();
  const sign = off < 0 ? "-" : "+";
  return `${localDay(d)}T${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`
    + `${sign}${pad2(Math.floor(Math.abs(off) / 60))}:${pad2(Math.abs(off) % 60)}`;
}
function defaultRange(form) {
  const today = localDay(new Date());
  if (!form.since.value) form.since.value = localDay(localMidnight(today, -6));
  if (!form.until.value) form.until.value = today;
}
function rangeParams(form) {
  const p = new URLSearchParams();
  if (form.since.value) p.set("since", isoWithOffset(localMidnight(form.since.value)));
  if (form.until.value) p.set("until", isoWithOffset(localMidnight(form.until.value, 1))); // up to the end of that day
  return p;
}

// A page of the list at a time: "Show more" asks for the next (the list stopped at 200 with
// no sign that more calls matched; an outside audit).
const HISTORY_PAGE = 200;
const History = { params: null, shown: 0 };

async function loadHistory(more = false) {
  const form = $("history-form");
  if (!more) {
    defaultRange(form);
    const p = rangeParams(form);
    if (form.agent.value.trim()) p.set("agent_id", form.agent.value.trim());
    if (form.customer.value.trim()) p.set("customer_id", form.customer.value.trim());
    if (form.q.value.trim()) p.set("q", form.q.value.trim());
    if (form.cue.value) p.set("cue", form.cue.value);
    if (form.escalation.value) p.set("escalation", form.escalation.value);
    History.params = p;
    History.shown = 0;
    loadCueChoices(form.cue);
  }
  const p = new URLSearchParams(History.params);
  p.set("limit", String(HISTORY_PAGE));
  p.set("offset", String(History.shown));
  $("history-status").textContent = "Loading…";
  $("history-more").hidden = true;
  const r = await Auth.api(`/api/history/calls?${p}`).catch(() => null);
  if (!r || !r.ok) { $("history-status").textContent = `Could not load calls (${r ? r.status : "network"}).`; return; }
  const calls = (await r.json()).calls;
  const rows = calls.map((c) => h("tr", {},
    h("td", { text: new Date(c.started_at).toLocaleString() }), h("td", { text: c.call_id }),
    h("td", { text: c.agent_id || "–" }), h("td", { text: c.duration_s != null ? fmtTime(c.duration_s) : "live" }),
    h("td", { text: END_WORDS[c.end_reason] || c.end_reason || "–" }),
    h("td", {}, h("a", { href: `#summary/${encodeURIComponent(c.call_id)}`, text: "Summary", "aria-label": `Summary of ${c.call_id}` }))));
  const body = $("history-table").tBodies[0];
  if (more) body.append(...rows); else body.replaceChildren(...rows);
  History.shown += calls.length;
  const full = calls.length === HISTORY_PAGE;
  $("history-status").textContent = full
    ? `The newest ${History.shown} calls; more match.`
    : `${History.shown} call(s).`;
  $("history-more").hidden = !full;
}

// The playbook's cue titles, by id: a handoff lists the cues shown by the titles the agent saw.
const cueTitles = {};
let cueChoices = null;
function loadPlaybook() {
  if (!cueChoices) {
    cueChoices = Auth.api("/api/playbook").then((r) => (r.ok ? r.json() : null)).catch(() => null);
    cueChoices.then((playbook) => {
      if (!playbook) { cueChoices = null; return; }
      for (const c of playbook.cues) cueTitles[c.cue] = c.title;
      // Alerts drawn before it came (a reload with escalations open) name their cues again.
      for (const dd of document.querySelectorAll("#alerts dd.cues-shown")) {
        dd.textContent = dd.dataset.ids.split(" ").map((id) => cueTitles[id] || id).join(", ");
      }
    });
  }
  return cueChoices;
}

// The cue filter lists the playbook's cues by title (once; the ids stay the values, so a
// call of a cue since renamed is still found).
async function loadCueChoices(select) {
  if (select.options.length > 1) return;
  const playbook = await loadPlaybook();
  if (!playbook || select.options.length > 1) return;
  select.append(...playbook.cues.map((c) => h("option", { value: c.cue, text: c.title })));
}

function pct(x) { return x == null ? "–" : `${Math.round(x * 100)} %`; }
function table(caption, heads, rows) {
  return h("table", { class: "grid" }, h("caption", { class: "sr-only", text: caption }),
    h("thead", {}, h("tr", {}, heads.map((x) => h("th", { scope: "col", text: x })))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((v, i) => h("td", { class: i ? "num" : "", text: String(v) }))))));
}

// The wrap-up outcomes agents recorded for the calls a cue showed in, most common first.
function outcomesText(outcomes) {
  const recorded = Object.entries(outcomes || {}).filter(([k]) => k !== "not recorded");
  if (!recorded.length) return "–";
  return recorded.sort((x, y) => y[1] - x[1]).map(([k, n]) => `${k} ${n}`).join(" · ");
}

// Calls an agent marked escalated that showed no warning (no escalation, no escalation
// request, frustration or crisis cue): where the coaching may have missed the moment. Each
// opens its post-call summary, where a line can be reported as a missed cue.
function unflaggedSection(ids) {
  return h("section", { class: "analytics-section", "aria-labelledby": "an-unflagged" },
    h("h2", { id: "an-unflagged", text: "Escalated with no warning shown" }),
    ids.length
      ? h("ul", { id: "an-unflagged-list", class: "plain" }, ids.map((id) => h("li", {}, h("a", { href: `#summary/${encodeURIComponent(id)}`, text: id }))))
      : h("p", { id: "an-unflagged-list", text: "None: every call marked escalated had a warning." }));
}

async function loadAnalytics() {
  const form = $("analytics-form");
  defaultRange(form);
  $("analytics-status").textContent = "Loading…";
  const r = await Auth.api(`/api/analytics/coaching?${rangeParams(form)}`).catch(() => null);
  if (!r || !r.ok) { $("analytics-status").textContent = `Could not load analytics (${r ? r.status : "network"}).`; return; }
  const a = await r.json();
  const o = a.outcome;
  $("analytics-status").textContent = `${a.calls} call(s) in range.`;
  $("analytics-body").replaceChildren(
    h("section", { class: "analytics-section", "aria-labelledby": "an-out" }, h("h2", { id: "an-out", text: "Did calls end better than they started?" }),
      h("p", { id: "an-outcome", text: `Better: ${o.better} · about the same: ${o.same} · worse: ${o.worse} · not enough speech: ${o.unknown}` })),
    h("section", { class: "analytics-section", "aria-labelledby": "an-cues" }, h("h2", { id: "an-cues", text: "Per cue" }),
      table("Cues", ["Cue", "Shown", "Helpful", "Not helpful", "Dismissed", "Rated", "Outcomes of its calls", "Reported missed"],
        a.cues.map((c) => [cueTitles[c.cue] || c.cue, c.shown, pct(c.helpful_rate), pct(c.not_helpful_rate), pct(c.dismissed_rate), c.rated, outcomesText(c.outcomes), c.missed_reports ?? 0]))),
    unflaggedSection(a.escalated_unflagged || []),
    h("section", { class: "analytics-section", "aria-labelledby": "an-agents" }, h("h2", { id: "an-agents", text: "Per agent" }),
      table("Agents", ["Agent", "Calls", "Cues shown", "Helpful", "Not helpful", "Dismissed", "Escalations", "Ended better", "Ended worse"],
        a.agents.map((x) => [x.agent_id, x.calls, x.shown, pct(x.helpful_rate), pct(x.not_helpful_rate), pct(x.dismissed_rate), x.escalations, x.better, x.worse]))),
    h("section", { class: "analytics-section", "aria-labelledby": "an-esc" }, h("h2", { id: "an-esc", text: "Escalations by reason" }),
      table("Escalations", ["Reason", "Total", "Critical", "High", "Medium", "Low"],
        a.escalations.map((e) => [REASONS[e.reason] || e.reason, e.total, e.critical || 0, e.high || 0, e.medium || 0, e.low || 0]))));
}

// -- views ----------------------------------------------------------------------------------
function route() {
  const [name, arg] = (location.hash.slice(1) || "live").split("/");
  const callId = arg ? decodeURIComponent(arg) : null;
  const view = { call: "drill", summary: "summary", history: "history", analytics: "analytics" }[name] || "live";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== view;
  const tab = { drill: "live", summary: "live" }[view] || view;
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const selected = t.getAttribute("aria-controls") === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1; // one tab stop for the tab list (ARIA tabs): arrows move in it
  }
  if (view !== "drill") closeDrill();
  if (view === "drill" && callId && (!Wall.drill || Wall.drill.callId !== callId)) openDrill(callId);
  if (view === "summary" && callId) openSummary(callId);
  if (view === "history") loadHistory();
  if (view === "analytics") loadAnalytics();
  paintAlertStrip();
  if (Wall.tabKeys) { Wall.tabKeys = false; return; } // moving along the tabs: the focus stays there
  const heading = document.querySelector(`#${view} h2`);
  if (heading && name !== "live") { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
}

// The ARIA tabs keys: Left/Right (wrapping), Home and End move to a tab and show its view.
function onTabKey(e) {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const at = tabs.indexOf(document.activeElement);
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[e.key];
  if (at < 0 || to === undefined) return;
  e.preventDefault();
  const next = tabs[(to + tabs.length) % tabs.length];
  next.focus();
  const hash = `#${next.getAttribute("aria-controls")}`;
  // pushState, not location.hash: going to a fragment would blur the tab just focused.
  if (location.hash !== hash) { history.pushState(null, "", hash); Wall.tabKeys = true; route(); }
}

(async () => {
  Wall.me = await Auth.require({ signinRoot: $("signin"), appRoot: $("app"), pageName: "supervisor wall", badgeRoot: $("user") });
  if (Wall.me.role === "agent") {
    $("notice").hidden = false;
    $("notice").replaceChildren("The wall is for supervisors. ", h("a", { href: "/agent/", text: "Open your agent panel" }), ".");
    document.querySelector("main").hidden = true;
    return;
  }
  SoundAlerts.init({ button: $("sound-toggle"), notice: $("sound-notice"), live: $("sound-live") });
  loadPlaybook();
  for (const t of document.querySelectorAll('[role="tab"]')) {
    t.addEventListener("click", () => { location.hash = `#${t.getAttribute("aria-controls")}`; });
  }
  document.querySelector('[role="tablist"]').addEventListener("keydown", onTabKey);
  $("history-form").addEventListener("submit", (e) => { e.preventDefault(); loadHistory(); });
  $("history-more").addEventListener("click", () => loadHistory(true));
  $("outcome-form").addEventListener("submit", saveOutcome);
  $("assign-form").addEventListener("submit", assignAgent);
  $("team-members").replaceChildren(...(Wall.me.team_members || []).map((m) => h("option", { value: m })));
  $("analytics-form").addEventListener("submit", (e) => { e.preventDefault(); loadAnalytics(); });
  window.addEventListener("hashchange", route);
  connectWall();
  route();
})();
