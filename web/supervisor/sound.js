// Audible escalation alerts on the supervisor wall, for a wall in a background tab or on a
// second screen. Off by default; the "Sound alerts" toggle (aria-pressed) is remembered in
// localStorage. A new critical escalation plays three quick high beeps, a new high one two
// softer, lower beeps; lower urgencies stay silent. Tones come from an oscillator (Web Audio),
// so there is no audio file to load.
//
// Each escalation sounds at most once: the wall reports every escalation it sees by key
// (call and seq), and a key is remembered whether it sounded or not, so a reconnect's
// snapshot, an acknowledgement or a repeated event never sounds it again. The wall's first
// snapshot is what was already open when the page loaded: it is remembered, not played.
// A burst plays one pattern, the most urgent, at most once a second.
//
// Browsers keep audio off until the user interacts with the page: after a reload with the
// preference on, a notice asks for a click (or a key), which resumes the audio.
"use strict";
const SoundAlerts = (() => {
  const KEY = "coach.wall.sound";
  const GAP_MS = 1000; // at most one pattern a second
  const GRACE_MS = 250; // some browsers start a permitted context a moment after creating it
  const RANK = { high: 1, critical: 2 };
  // Urgent is high-pitched, fast and repeated; high is lower, slower and quieter.
  const PATTERNS = {
    critical: { hz: 1046.5, beeps: 3, on_s: 0.09, gap_s: 0.06, gain: 0.3 },
    high: { hz: 659.3, beeps: 2, on_s: 0.14, gap_s: 0.12, gain: 0.15 },
  };
  const AudioCtx = window.AudioContext || window.webkitAudioContext;
  const heard = new Set();
  let on = false;
  let ctx = null;
  let checked = false; // the grace after creating the context is over
  let lastRank = 0;
  let lastAt = -Infinity;
  let pending = null;
  let timer = null;
  let ui = null; // {button, notice, live}

  function storedOn() {
    try { return localStorage.getItem(KEY) === "on"; } catch { return false; }
  }

  function store(value) {
    try { localStorage.setItem(KEY, value ? "on" : "off"); } catch { /* private mode: this page only */ }
  }

  function context() {
    if (!ctx) {
      ctx = new AudioCtx();
      ctx.addEventListener("statechange", showNotice);
    }
    return ctx;
  }

  // The notice shows while the preference is on and the browser holds the audio back.
  function showNotice() {
    const blocked = on && checked && ctx !== null && ctx.state !== "running";
    if (blocked === !ui.notice.hidden) return;
    ui.notice.hidden = !blocked;
    ui.live.textContent = blocked
      ? "Sound alerts are paused by the browser: click anywhere or press any key to turn them back on."
      : (on ? "Sound alerts on." : "");
  }

  // Resume (inside a click or key press, where the browser allows it) and say if it is held.
  async function wake() {
    const c = context();
    const resumed = c.resume().catch(() => null);
    await Promise.race([resumed, new Promise((res) => setTimeout(res, GRACE_MS))]);
    checked = true;
    showNotice();
  }

  function setOn(value) {
    on = value;
    store(value);
    ui.button.setAttribute("aria-pressed", String(value));
    ui.button.querySelector(".state").textContent = value ? "on" : "off";
    if (value) { wake(); return; } // the notice waits for the outcome: no flash while it resumes
    if (ctx) ctx.suspend().catch(() => null);
    showNotice();
  }

  // Any click or key press is the interaction the browser waits for.
  function onInteraction() {
    if (on && ctx && ctx.state !== "running") wake();
  }

  function beep(c, p, at) {
    const osc = c.createOscillator();
    const gain = c.createGain();
    osc.type = "sine";
    osc.frequency.value = p.hz;
    // A short ramp in and out: a tone switched on and off at full level clicks.
    gain.gain.setValueAtTime(0, at);
    gain.gain.linearRampToValueAtTime(p.gain, at + 0.01);
    gain.gain.setValueAtTime(p.gain, at + p.on_s - 0.02);
    gain.gain.linearRampToValueAtTime(0, at + p.on_s);
    osc.connect(gain).connect(c.destination);
    osc.start(at);
    osc.stop(at + p.on_s);
  }

  function play(urgency) {
    timer = null;
    pending = null;
    // Held back by the browser: the alert is on screen; a tone kept for later would be stale.
    if (!on || !ctx || ctx.state !== "running") return;
    const p = PATTERNS[urgency];
    const t0 = ctx.currentTime + 0.02;
    for (let i = 0; i < p.beeps; i++) beep(ctx, p, t0 + i * (p.on_s + p.gap_s));
    lastRank = RANK[urgency];
    lastAt = performance.now();
  }

  // Within a second of a pattern, only a more urgent one follows, when the second is over.
  function request(urgency) {
    const wait = lastAt + GAP_MS - performance.now();
    if (wait <= 0 && !timer) { play(urgency); return; }
    if (wait > 0 && !timer && RANK[urgency] <= lastRank) return; // already alerted at this level
    if (!pending || RANK[urgency] > RANK[pending]) pending = urgency;
    if (!timer) timer = setTimeout(() => play(pending), Math.max(0, wait));
  }

  return {
    // Wire the toggle, the notice and its live region; read the stored preference.
    init({ button, notice, live }) {
      ui = { button, notice, live };
      if (!AudioCtx) return; // no Web Audio: the toggle stays hidden rather than do nothing
      button.hidden = false;
      button.addEventListener("click", () => setOn(!on));
      for (const type of ["pointerdown", "keydown"]) window.addEventListener(type, onInteraction, true);
      if (storedOn()) setOn(true);
    },

    // Escalations as the wall sees them, [{key, urgency, open}]; `quiet` (the first snapshot)
    // remembers them without a sound. A batch plays one pattern, its most urgent.
    escalations(list, quiet = false) {
      let best = null;
      for (const { key, urgency, open } of list) {
        if (heard.has(key)) continue;
        heard.add(key);
        if (open && RANK[urgency] && (!best || RANK[urgency] > RANK[best])) best = urgency;
      }
      if (best && on && !quiet) request(best);
    },
  };
})();
