// Live transcript of one call: partials (greyed) are replaced by the final of the same utterance.
// Resumes after a network blip from the last event sequence number it saw.
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let lastSeq = 0, socket = null, retry = 0;

function line(ev) {
  const key = `${ev.speaker}-${ev.utterance_id}`;
  let li = document.querySelector(`li[data-key="${key}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.key = key;
    $("transcript").appendChild(li);
  }
  li.className = `${ev.speaker} ${ev.type}`;
  li.replaceChildren();
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = ev.speaker;
  li.append(who, document.createTextNode(ev.text));
  li.scrollIntoView({ block: "nearest" });
}

function customerState(st) {
  const el = $("state");
  el.textContent = `${st.emotion} · valence ${st.valence.toFixed(2)} · arousal ${st.arousal.toFixed(2)}`;
  el.title = (st.why || []).join("; ");
  el.dataset.emotion = st.emotion;
}

function metrics(ev) {
  const rows = {
    "Customer talk": `${Math.round(ev.talk_ratio.customer * 100)} %`,
    "Agent talk": `${Math.round(ev.talk_ratio.agent * 100)} %`,
    "Silence": `${ev.silence_s.toFixed(1)} s`,
    "Agent pace": ev.agent_wps == null ? "–" : `${ev.agent_wps.toFixed(1)} words/s`,
  };
  $("metrics").replaceChildren(...Object.entries(rows).flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v; return [dt, dd];
  }));
}

function connect(callId, token) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams({ after_seq: String(lastSeq) });
  if (token) q.set("token", token);
  socket = new WebSocket(`${proto}://${location.host}/ws/calls/${encodeURIComponent(callId)}/events?${q}`);
  socket.onopen = () => { retry = 0; $("status").textContent = `Watching ${callId}`; };
  socket.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    if (ev.seq && ev.seq <= lastSeq) return;
    if (ev.seq) lastSeq = ev.seq;
    if (ev.type === "partial" || ev.type === "transcript") line(ev);
    if (ev.type === "transcript" && ev.state) customerState(ev.state);
    else if (ev.type === "metrics") metrics(ev);
    else if (ev.type === "call_end") $("status").textContent = `Call ended after ${ev.duration_s} s`;
    else if (ev.type === "error") $("status").textContent = `Error: ${ev.message}`;
  };
  socket.onclose = (e) => {
    if (e.code === 1000 || e.code === 1008) return;
    retry = Math.min(retry + 1, 6);
    $("status").textContent = "Reconnecting…";
    setTimeout(() => connect(callId, token), 250 * 2 ** retry);
  };
}

$("connect").addEventListener("submit", (e) => {
  e.preventDefault();
  if (socket) socket.close(1000);
  lastSeq = 0;
  $("transcript").replaceChildren();
  connect($("call").value.trim(), $("token").value.trim());
});
if (params.get("call")) {
  $("call").value = params.get("call");
  $("token").value = params.get("token") || "";
  connect($("call").value, $("token").value);
}
