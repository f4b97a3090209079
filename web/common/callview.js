// The live view of one call, shared by the agent panel and the supervisor's drill-in:
// cue cards, the transcript (partials greyed, replaced by finals, trigger phrases marked),
// the customer's state with its trend line, and the conversation metrics.
//
// Time on cards is call time (`t_emit`), so a card expires `expires_s` of call audio after
// it was raised, whatever the network did. At most MAX_CARDS are shown, newest on top (below
// any crisis card); the rest collapse into "Earlier suggestions". Crisis cards stay until
// acted on, after the call too. A collapsed
// card opens again on click, with its why and its feedback buttons: after the call, when
// every card has collapsed, is when agents have time to rate them.
//
// A frozen view (`freeze()`) is an earlier part of a call that goes on in another view (the
// agent panel keeps a leg that was cut off above the leg that resumed it): it stays as it
// was, verdicts included, and its cards can still be rated.
"use strict";
const REASONS = {
  high_emotional_intensity: "High emotional intensity",
  repeated_frustration: "Repeated frustration",
  complex_inquiry: "Complex inquiry",
  user_request: "Customer asked for a supervisor",
  low_confidence: "Low confidence",
  crisis_indicators: "Crisis indicators",
};
const VERDICT_LABELS = { helpful: "Helpful", not_helpful: "Not helpful", dismissed: "Dismissed" };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// A button disabled (or swapped out) while its request runs drops the keyboard focus to
// <body>. Call before disabling it; the function returned gives the focus back, to it or to
// `to`, unless the person has moved on meanwhile.
function keepFocus(from) {
  const had = document.activeElement === from;
  return (to = from) => {
    const now = document.activeElement;
    if (had && to.isConnected && (!now || now === document.body)) to.focus({ preventScroll: true });
  };
}

function fmtTime(s) {
  s = Math.max(0, Math.round(s));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

class CallView {
  static MAX_CARDS = 3;
  static DEFAULT_EXPIRES_S = 45;
  // The pace is marked fast only this long (call time) after the engine's own
  // agent_pace_fast cue: the panel's words/s is a different, uncalibrated measure.
  static PACE_CUE_WINDOW_S = 30;
  static OUTCOMES = ["resolved", "callback scheduled", "escalated", "unresolved"];

  static cutOff(reason) {
    return ["interrupted", "shutdown", "disconnect"].includes(reason) || String(reason || "").startsWith("error:");
  }
  static instances = 0; // ids stay unique with two views on a page (an earlier part above)

  constructor(root, { callId, readOnly = false } = {}) {
    this.root = root;
    this.callId = callId;
    this.readOnly = readOnly;
    this.uid = `${readOnly ? "ro" : "cv"}${++CallView.instances}`;
    this.now = 0; // call time of the latest event
    this.trendPoints = [];
    this.marks = new Map(); // "speaker-utterance" -> [{phrase, title}]
    this.ended = false;
    this.paceCueAt = null; // call time of the latest agent_pace_fast cue
    this.lastSpeechWall = Date.now();
    this.build();
    this.timer = setInterval(() => this.tick(), 1000);
  }

  build() {
    const id = (s) => `${this.uid}-${s}`;
    this.cards = h("ol", { class: "cards", "aria-label": "Current suggestions" });
    this.olderList = h("ol", { class: "older-cards" });
    this.olderCount = h("span", { text: "0" });
    this.older = h("details", { class: "older", hidden: true },
      h("summary", {}, "Earlier suggestions (", this.olderCount, ")"), this.olderList);
    this.banner = h("p", { class: "escalation-banner", hidden: true, role: "status" });
    this.endNote = h("p", { class: "end-note", hidden: true, role: "status" });
    this.lines = h("ol", { class: "lines", "aria-label": "Transcript" });
    this.emotion = h("p", { class: "emotion", text: "No customer speech yet." });
    this.trendSvg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    this.trendSvg.classList.add("trend");
    Charts.trend(this.trendSvg, []);
    this.metricsList = h("dl", { class: "metrics" });
    this.announce = h("div", { class: "sr-only", "aria-live": "polite", "aria-atomic": "true" });
    this.alert = h("div", { class: "sr-only", role: "alert" });
    this.cuesSection = h("section", { class: "cv-cues", "aria-labelledby": id("cues") },
      h("h2", { id: id("cues") }, "Suggestions ", h("span", { class: "ai-label", text: "AI" })),
      this.endNote, this.banner, this.cards,
      h("p", { class: "empty-cards", text: "No suggestions right now." }),
      this.older);
    this.root.replaceChildren(h("div", { class: "callview" },
      this.cuesSection,
      h("section", { class: "cv-transcript", "aria-labelledby": id("tr") },
        h("h2", { id: id("tr"), text: "Transcript" }), this.lines),
      h("aside", { class: "cv-state", "aria-labelledby": id("st") },
        h("h2", { id: id("st"), text: "Customer" }), this.emotion, this.trendSvg,
        h("p", { class: "legend" },
          h("span", { class: "key valence", text: "valence" }), " ",
          h("span", { class: "key arousal", text: "arousal" })),
        h("h2", { text: "Conversation" }), this.metricsList),
      this.announce, this.alert));
    this.renderMetrics({});
  }

  destroy() {
    clearInterval(this.timer);
    clearTimeout(this.verdictTimer);
    this.root.replaceChildren();
  }

  handle(ev) {
    if (typeof ev.t_emit === "number") this.now = Math.max(this.now, ev.t_emit);
    switch (ev.type) {
      case "partial":
      case "transcript":
        this.line(ev);
        this.lastSpeechWall = Date.now();
        if (ev.type === "transcript" && ev.state) this.customerState(ev);
        break;
      case "cue": this.addCard(ev); break;
      case "escalation": this.escalation(ev); break;
      case "escalation_taken": this.escalationTaken(ev); break;
      case "metrics": this.renderMetrics(ev); break;
      case "call_end":
        this.ended = true;
        this.endedInfo = ev;
        this.dropPartials();
        // A crisis card nobody acted on stays in view after the call, as during it.
        for (const card of [...this.cards.children]) {
          const actedOn = card.querySelector('.fb[aria-pressed="true"]');
          if (!card.classList.contains("critical") || actedOn) this.collapse(card);
        }
        // The call's suggestions stay in reach for rating: the list is open, each card opens.
        if (this.olderList.children.length) this.older.open = true;
        if (ev.reason === "interrupted") {
          this.note("The call was cut off when the server stopped; what was received is saved.");
        } else if (ev.reason === "shutdown") {
          this.note("The call was ended because the server shut down; what was received is saved.");
        }
        this.renderMetrics(this.lastMetrics || {});
        // Not for a call cut off: it may go on as a new leg (the telephony reconnects).
        if (!this.readOnly && !CallView.cutOff(ev.reason)) this.outcomePrompt();
        break;
      default: break;
    }
    this.expire();
    this.paintPace();
  }

  // No more events will come (the call is gone from the server), though no call_end said so:
  // keep everything shown, stop counting silence, and say why.
  finish(text) {
    this.ended = true;
    this.dropPartials();
    if (text) this.note(text);
    this.tick();
  }

  // This part of the call is over and goes on in another view: keep it as shown (cards,
  // verdicts, transcript) and stop its clock. Its cards can still be rated and its lines
  // reported: they are stored under this leg's id, and after the call, when every card has
  // collapsed, is when agents have time to rate them.
  freeze() {
    this.finish();
    clearInterval(this.timer);
  }

  // After the call, its agent says how it ended for the customer (one click; stored with the
  // call, PUT /api/calls/{id}/outcome): what a supervisor reviews and the analytics count.
  outcomePrompt() {
    if (this.outcomeBox) return;
    const status = h("span", { class: "outcome-status", role: "status" });
    const buttons = CallView.OUTCOMES.map((value) => h("button", {
      type: "button", "aria-pressed": "false", onclick: () => choose(value),
    }, value));
    const choose = async (value) => {
      const path = `/api/calls/${encodeURIComponent(this.callId)}/outcome`;
      const r = await Auth.api(path, { method: "PUT", json: { outcome: value } }).catch(() => null);
      const ok = Boolean(r && r.ok);
      for (const b of buttons) b.setAttribute("aria-pressed", String(ok && b.textContent === value));
      status.textContent = ok ? `Saved: ${value}` : `Not saved (${r ? r.status : "network"}); try again.`;
    };
    this.outcomeBox = h("div", { class: "outcome", role: "group", "aria-label": "How did the call end for the customer?" },
      h("span", { class: "outcome-q", text: "How did it end for the customer?" }), ...buttons, status);
    // The agent's own wrap-up, above the AI's suggestions and under a heading of its own (it
    // sat under "Suggestions AI" and read as one of them: a newcomer's audit).
    this.cuesSection.prepend(h("h2", { class: "wrapup-heading", text: "Wrap-up" }), this.outcomeBox);
    // Reopened after a reload: what is recorded shows, so nobody overwrites it unawares.
    Auth.api(`/api/history/calls/${encodeURIComponent(this.callId)}`)
      .then((r) => (r.ok ? r.json() : null))
      .then((d) => {
        const stored = d && d.call && d.call.outcome;
        if (!stored || status.textContent) return;
        for (const b of buttons) b.setAttribute("aria-pressed", String(b.textContent === stored));
        status.textContent = `Recorded: ${stored} (by ${d.call.outcome_by})`;
      })
      .catch(() => {});
  }

  // A grey partial still shown when the call is over was cut off before its final: it is not
  // what was said (an unstable guess) and was never stored, so it goes (an outside audit saw
  // a cut-off call keep its last partial for good).
  dropPartials() {
    for (const li of this.lines.querySelectorAll("li.partial")) li.remove();
  }

  note(text) {
    this.endNote.textContent = text;
    this.endNote.hidden = false;
  }

  // -- transcript ---------------------------------------------------------------------
  line(ev) {
    const key = `${ev.speaker}-${ev.utterance_id ?? `t${ev.t_start}`}`;
    // Follow the newest line only while the agent is at the end (not reading back up).
    const box = this.lines;
    const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    let li = this.lines.querySelector(`li[data-key="${CSS.escape(key)}"]`);
    if (!li) {
      li = h("li", { "data-key": key });
      this.lines.append(li);
    }
    li.className = `${ev.speaker} ${ev.type}`;
    li.dataset.text = ev.text;
    li.replaceChildren(
      h("span", { class: "who", text: ev.speaker === "agent" ? "Agent" : "Customer" }),
      h("span", { class: "t", text: fmtTime(ev.t_start) }),
      h("span", { class: "text" }));
    if (!this.readOnly && ev.type === "transcript" && ev.speaker === "customer" && ev.seq != null) {
      li.append(this.missedControl(ev));
    }
    this.paintMarks(li);
    // Scrolled in its own box: scrollIntoView would scroll the window too, and in the
    // one-column layout that slides the cue cards above the transcript off the screen.
    if (atEnd) box.scrollTop = box.scrollHeight;
  }

  paintMarks(li) {
    const span = li.querySelector(".text");
    const text = li.dataset.text || "";
    const marks = li.classList.contains("transcript") ? this.marks.get(li.dataset.key) || [] : [];
    const ranges = [];
    for (const m of marks) {
      const at = text.toLowerCase().indexOf(m.phrase.toLowerCase());
      if (at >= 0 && m.phrase) ranges.push([at, at + m.phrase.length, m.title]);
    }
    ranges.sort((a, b) => a[0] - b[0]);
    let pos = 0;
    const parts = [];
    for (const [a, b, title] of ranges) {
      if (a < pos) continue; // overlapping phrases: keep the first
      parts.push(text.slice(pos, a), h("mark", { class: "trigger", title: `Trigger for: ${title}`, text: text.slice(a, b) }));
      pos = b;
    }
    parts.push(text.slice(pos));
    span.replaceChildren(...parts);
  }

  markEvidence(ev) {
    const evd = ev.evidence || {};
    const phrases = CallView.triggerPhrases(ev).filter(Boolean);
    if (!phrases.length) return;
    let key = evd.utterance_id !== undefined && evd.utterance_id !== null
      ? `${ev.speaker || "customer"}-${evd.utterance_id}` : null;
    if (!key) {
      // No utterance id: the latest line of that speaker containing the quote.
      const lines = [...this.lines.querySelectorAll(`li.${ev.speaker || "customer"}`)].reverse();
      const hit = lines.find((li) => phrases.some((p) => (li.dataset.text || "").toLowerCase().includes(p.toLowerCase())));
      key = hit ? hit.dataset.key : null;
    }
    if (!key) return;
    const list = this.marks.get(key) || [];
    for (const phrase of phrases) list.push({ phrase, title: ev.title || ev.cue });
    this.marks.set(key, list);
    const li = this.lines.querySelector(`li[data-key="${CSS.escape(key)}"]`);
    if (li) this.paintMarks(li);
  }

  // What to mark as a cue's trigger: the words the server names (`evidence.phrases`). A cue
  // raised by timing, the customer's call history or a state held over several turns names
  // none (`evidence.source`); its evidence text is just the current line, and marking it
  // would point at words that triggered nothing. Events stored before `source` existed: the
  // words it matched, read from a `words: "..."` reason.
  static triggerPhrases(ev) {
    const evd = ev.evidence || {};
    if (evd.phrases && evd.phrases.length) return evd.phrases;
    if (evd.source) return [];
    const reasons = Array.isArray(ev.reasons) ? ev.reasons : [];
    const words = reasons.find((r) => typeof r === "string" && r.startsWith("words:"));
    if (!words || !evd.text) return [];
    const quoted = /^words: "(.+?)"(?= means | \(|$)/.exec(words);
    const clause = quoted && quoted[1];
    return clause && evd.text.toLowerCase().includes(clause.toLowerCase()) ? [clause] : [evd.text];
  }

  // -- cue cards ----------------------------------------------------------------------
  addCard(ev) {
    if (this.root.querySelector(`[data-seq="${ev.seq}"]`)) return;
    this.markEvidence(ev);
    if (ev.cue === "agent_pace_fast") this.paceCueAt = Math.max(this.paceCueAt ?? -Infinity, ev.t_emit ?? this.now);
    const critical = ev.severity === "critical" || ev.cue === "crisis";
    const titleId = `cue-${this.uid}-${ev.seq}`;
    const reasons = Array.isArray(ev.reasons) ? ev.reasons : [];
    const card = h("li", {
      class: `card${critical ? " critical" : ""} p${ev.priority ?? 3}`,
      "data-seq": ev.seq, "data-cue": ev.cue, "data-t": String(ev.t_emit ?? this.now),
      "data-expires": critical ? "" : String((ev.t_emit ?? this.now) + (ev.expires_s ?? CallView.DEFAULT_EXPIRES_S)),
      "aria-labelledby": titleId,
    },
      h("p", { class: "card-label" },
        h("span", { class: "ai-label", text: ev.label || "AI suggestion" }),
        critical ? h("span", { class: "critical-label", text: "Critical" }) : null,
        h("span", { class: "card-time", text: fmtTime(ev.t_emit ?? this.now) }),
        h("button", {
          type: "button", class: "card-toggle", "aria-expanded": "false",
          "aria-label": `${this.toggleText(false)}: ${ev.title || ev.cue}`,
          onclick: (e) => { e.stopPropagation(); this.toggleCard(card); },
        }, this.toggleText(false))),
      h("h3", { id: titleId, text: ev.title || ev.cue }),
      h("p", { class: "advice", text: ev.advice || "" }),
      // The reasons once, as a list (`why` is the same reasons joined: shown both ways, each
      // card said everything twice; a newcomer's audit); `why` alone when there is no list.
      h("div", { class: "why" }, h("strong", { text: "Why: " }),
        reasons.length > 1
          ? h("ul", { class: "reasons" }, reasons.map((r) => h("li", { text: r })))
          : (reasons[0] || ev.why || "")),
      this.readOnly ? h("p", { class: "verdicts", "aria-live": "polite" }) : this.feedbackButtons(ev));
    // A click anywhere on a collapsed card opens it (the toggle button is the keyboard way).
    card.addEventListener("click", (e) => {
      if (card.classList.contains("collapsed") && !card.classList.contains("open") && !e.target.closest("button, a, select")) {
        this.toggleCard(card);
      }
    });
    // Newest on top, but never above a crisis card: a routine card raised with it (the same
    // clause read as dejection) sat above the red card with softer advice (an outside audit).
    const crises = [...this.cards.children].filter((c) => c.classList.contains("critical"));
    if (critical || !crises.length) this.cards.prepend(card);
    else crises[crises.length - 1].after(card);
    while (this.cards.children.length > CallView.MAX_CARDS) {
      // The oldest non-critical card makes room (a crisis card is never pushed out).
      const victims = [...this.cards.children].reverse();
      this.collapse(victims.find((c) => !c.classList.contains("critical")) || victims[0]);
    }
    this.syncEmpty();
    if (!this.readOnly) this.loadVerdicts();
    const say = `New suggestion${critical ? ", critical" : ""}: ${ev.title || ev.cue}. ${ev.advice || ""}`;
    (critical ? this.alert : this.announce).textContent = say;
  }

  feedbackButtons(ev) {
    const status = h("span", { class: "feedback-status", role: "status" });
    const group = h("div", { class: "feedback", role: "group", "aria-label": `Feedback on ${ev.title || ev.cue}` });
    for (const [verdict, label] of Object.entries({ helpful: "Helpful", not_helpful: "Not helpful", dismissed: "Dismiss" })) {
      group.append(h("button", {
        type: "button", class: `fb ${verdict}`, "data-verdict": verdict, "aria-pressed": "false",
        onclick: () => this.sendFeedback(ev, verdict, group, status),
      }, label));
    }
    group.append(status);
    return group;
  }

  // The verdicts this person already gave (stored with the call), shown as pressed: after a
  // reload or a reconnect the replayed cards would otherwise look unrated. Cards come in a
  // burst on replay, so one request follows the last of them.
  loadVerdicts() {
    clearTimeout(this.verdictTimer);
    this.verdictTimer = setTimeout(async () => {
      const me = Auth.me();
      const r = await Auth.api(`/api/history/calls/${encodeURIComponent(this.callId)}`).catch(() => null);
      if (!me || !r || !r.ok) return;
      for (const c of (await r.json()).cues || []) {
        const mine = (c.feedback || []).filter((f) => f.user === me.user).pop();
        const group = mine && this.root.querySelector(`.card[data-seq="${c.seq}"] .feedback`);
        if (!group || group.querySelector('button[aria-pressed="true"]')) continue;
        for (const b of group.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.verdict === mine.verdict));
        group.querySelector(".feedback-status").textContent = `You marked this ${VERDICT_LABELS[mine.verdict].toLowerCase()}.`;
        const card = group.closest(".card");
        if (mine.verdict === "dismissed" && card.parentElement === this.cards) this.collapse(card);
      }
    }, 500);
  }

  // A second press on the verdict already given takes it back.
  async sendFeedback(ev, verdict, group, status) {
    const path = `/api/calls/${encodeURIComponent(this.callId)}/cues/${ev.seq}/feedback`;
    const pressed = group.querySelector(`button[data-verdict="${verdict}"]`).getAttribute("aria-pressed") === "true";
    // Disabled while sending, the pressed button loses the focus: it gets it back after.
    const focusBack = group.contains(document.activeElement) ? document.activeElement : null;
    const refocus = () => {
      if (focusBack && focusBack.isConnected && document.activeElement === document.body) focusBack.focus({ preventScroll: true });
    };
    status.textContent = "Sending…";
    for (const b of group.querySelectorAll("button")) b.disabled = true;
    if (pressed) {
      const { ok, detail } = await CallView.withdraw(path);
      for (const b of group.querySelectorAll("button")) {
        b.disabled = false;
        if (ok) b.setAttribute("aria-pressed", "false");
      }
      refocus();
      status.textContent = ok ? "Rating taken back." : `Not taken back (${detail}); try again.`;
      return;
    }
    const { ok, detail } = await CallView.postStored(path, { verdict });
    for (const b of group.querySelectorAll("button")) {
      b.disabled = false;
      b.setAttribute("aria-pressed", String(ok && b.dataset.verdict === verdict));
    }
    refocus();
    status.textContent = ok ? `Thanks: marked ${VERDICT_LABELS[verdict].toLowerCase()}.` : `Not saved (${detail}); try again.`;
    if (ok && verdict === "dismissed") {
      const card = group.closest(".card");
      if (card && card.parentElement === this.cards) this.collapse(card);
    }
  }

  // -- "this line should have shown a cue" ------------------------------------------------
  // The agent knows best which moment had no suggestion. The report goes to the call history
  // and from there into the playbook (scripts/tune_playbook.py --missed).
  missedControl(ev) {
    const select = h("select", { "aria-label": `Suggestion this line should have had (${fmtTime(ev.t_start)})` });
    const status = h("span", { class: "missed-status", role: "status" });
    const send = h("button", { type: "button", text: "Report", disabled: true,
      onclick: () => this.sendMissed(ev, select.value, send, status) });
    const details = h("details", { class: "missed" }, h("summary", { text: "Missed a cue?" }), select, send, status);
    details.addEventListener("toggle", async () => {
      if (!details.open || select.options.length) return;
      const choices = await CallView.missedChoices();
      select.replaceChildren(...choices.map((c) => h("option", { value: c.cue, text: c.title })));
      send.disabled = !choices.length;
      if (!choices.length) status.textContent = "Not available right now.";
    });
    return details;
  }

  static async missedChoices() {
    if (!CallView.choices) {
      const r = await Auth.api("/api/missed-cues/cues").catch(() => null);
      if (!r || !r.ok) return [];
      CallView.choices = await r.json();
    }
    return CallView.choices;
  }

  async sendMissed(ev, cue, send, status) {
    const refocus = keepFocus(send);
    send.disabled = true;
    status.textContent = "Sending…";
    const path = `/api/calls/${encodeURIComponent(this.callId)}/utterances/${ev.seq}/missed-cue`;
    const { ok, detail } = await CallView.postStored(path, { cue });
    send.disabled = false;
    refocus();
    const title = ((CallView.choices || []).find((c) => c.cue === cue) || {}).title || cue;
    if (!ok) { status.textContent = `Not saved (${detail}); try again.`; return; }
    // A report sent by mistake can be taken back at once, before the tuner ever reads it.
    const undo = h("button", { type: "button", class: "undo", text: "Undo", onclick: async () => {
      const refocusUndo = keepFocus(undo);
      undo.disabled = true;
      const back = await CallView.withdraw(`${path}/${encodeURIComponent(cue)}`);
      status.textContent = back.ok ? `Report of "${title}" taken back.` : `Not taken back (${back.detail}); try again.`;
      if (!back.ok) status.append(" ", undo);
      undo.disabled = false;
      refocusUndo(back.ok ? send : undo); // taken back, the Undo is gone: back to Report
    } });
    status.replaceChildren(`Thanks: reported "${title}" as missed. `, undo);
  }

  // POST about something shown in this call. It reaches the store within a second of being
  // shown: retry a "not found" (or a store briefly away) a few times.
  static async postStored(path, json) {
    let detail = "";
    for (let attempt = 0; attempt < 6; attempt++) {
      const r = await Auth.api(path, { method: "POST", json }).catch((err) => ({ ok: false, status: 0, err }));
      if (r.ok) return { ok: true, detail: "" };
      detail = r.status ? `error ${r.status}` : "network error";
      if (r.status !== 404 && r.status !== 503 && r.status !== 0) break;
      await new Promise((res) => setTimeout(res, 500));
    }
    return { ok: false, detail };
  }

  // DELETE something this person said about the call; "not found" means it is already gone.
  static async withdraw(path) {
    const r = await Auth.api(path, { method: "DELETE" }).catch(() => ({ ok: false, status: 0 }));
    if (r.ok || r.status === 404) return { ok: true, detail: "" };
    return { ok: false, detail: r.status ? `error ${r.status}` : "network error" };
  }

  toggleText(open) { return open ? "Hide" : this.readOnly ? "Show why" : "Show why and rate"; }

  toggleCard(card) {
    card.classList.toggle("open");
    this.labelToggle(card);
  }

  labelToggle(card) {
    const open = card.classList.contains("open");
    const button = card.querySelector(".card-toggle");
    button.setAttribute("aria-expanded", String(open));
    button.textContent = this.toggleText(open);
    button.setAttribute("aria-label", `${this.toggleText(open)}: ${card.querySelector("h3").textContent}`);
  }

  collapse(card) {
    if (!card || card.parentElement === this.olderList) return;
    const hadFocus = card.contains(document.activeElement);
    card.classList.add("collapsed");
    // Newest first by when each was shown: cards expire, and the rest collapse at call end,
    // in another order than they came (an outside audit saw 0:43, 0:53, 0:30).
    const t = Number(card.dataset.t);
    const later = [...this.olderList.children].find((c) => !(Number(c.dataset.t) > t));
    this.olderList.insertBefore(card, later ?? null);
    this.older.hidden = false;
    this.olderCount.textContent = String(this.olderList.children.length);
    this.syncEmpty();
    // Moved, the card drops the focus (to <body>), and its feedback buttons are hidden now:
    // the focus follows it, to its toggle, or to the list's summary while the list is shut.
    if (hadFocus) (this.older.open ? card.querySelector(".card-toggle") : this.older.querySelector("summary")).focus({ preventScroll: true });
  }

  expire() {
    for (const card of [...this.cards.children]) {
      const until = parseFloat(card.dataset.expires);
      if (!Number.isNaN(until) && this.now > until) this.collapse(card);
    }
  }

  syncEmpty() {
    this.root.querySelector(".empty-cards").hidden = this.cards.children.length > 0;
  }

  // Every escalation of the call, the most urgent first: a second one (a manager asked for
  // after a crisis) replaced the first in the banner, and the supervisor taking the crisis
  // then never reached the agent (an outside supervisor audit).
  escalation(ev) {
    if (!this.escalations) this.escalations = new Map();
    const known = this.escalations.get(ev.seq);
    this.escalations.set(ev.seq, {
      urgency: ev.urgency, reason: REASONS[ev.reason] || ev.reason,
      t: typeof ev.t_emit === "number" ? ev.t_emit : null,
      by: known ? known.by : null,
    });
    // A call read back from the store says who took it on the escalation itself.
    if (ev.acknowledged_by) this.escalations.get(ev.seq).by = ev.acknowledged_by;
    this.renderBanner();
  }

  // A supervisor acknowledged one of the call's escalations: the agent knows help is coming
  // (an outside audit: the agent of a crisis call never learned whether anyone was).
  escalationTaken(ev, announce = true) {
    const e = this.escalations && this.escalations.get(ev.escalation_seq);
    if (!e || e.by !== null) return;
    e.by = ev.by || "";
    this.renderBanner();
    if (announce) this.announce.textContent = `${CallView.taker(e.by)} has taken the escalation.`;
  }

  static taker(by) { return by ? `Supervisor ${by}` : "A supervisor"; }

  renderBanner() {
    const rank = { critical: 0, high: 1, medium: 2, low: 3 };
    const all = [...this.escalations.entries()]
      .sort(([sa, a], [sb, b]) => ((rank[a.urgency] ?? 4) - (rank[b.urgency] ?? 4)) || sb - sa);
    const top = all[0][1];
    const taken = all.every(([, e]) => e.by !== null);
    this.banner.hidden = false;
    this.banner.className = `escalation-banner ${top.urgency}${taken ? " taken" : ""}`;
    // replaceChildren writes a null as the text "null": only elements go in.
    this.banner.replaceChildren(...all.flatMap(([seq, e], i) => [
      ...(i ? [h("br")] : []),
      h("span", { class: "escalation-line", "data-seq": seq },
        // When: a re-page read as the same line twice, and nothing said which was taken
        // (an outside UI audit).
        `Supervisor alerted (${e.urgency})${e.t !== null ? ` at ${fmtTime(e.t)}` : ""}: ${e.reason}.`,
        e.by !== null ? h("span", { class: "taken-by", text: ` ${CallView.taker(e.by)} has it.` }) : null),
    ]));
  }

  // -- state and metrics --------------------------------------------------------------
  static moodWord(v) {
    return v <= -0.5 ? "very negative" : v <= -0.15 ? "negative" : v < 0.15 ? "neutral"
      : v < 0.5 ? "positive" : "very positive";
  }

  static energyWord(a) {
    return a >= 0.7 ? "agitated" : a >= 0.45 ? "lively" : a >= 0.25 ? "calm" : "flat";
  }

  customerState(ev) {
    const st = ev.state;
    this.trendPoints.push({ t: ev.t_end ?? this.now, valence: st.valence, arousal: st.arousal });
    Charts.trend(this.trendSvg, this.trendPoints);
    // Where the mood is heading, as the server judges it for every view (the wall tile and
    // the handoff say the same); a server before that judgement sent none.
    const words = { worsening: " · getting worse", improving: " · improving", steady: " · steady" };
    const trend = (st.trend && words[st.trend.direction]) || "";
    // In words first, the figures after them (bare "valence -0.31 · arousal 0.40" told an
    // agent nothing: a newcomer's audit).
    this.emotion.textContent = `${st.emotion} · mood ${CallView.moodWord(st.valence)} (valence ${st.valence.toFixed(2)})`
      + ` · energy ${CallView.energyWord(st.arousal)} (arousal ${st.arousal.toFixed(2)})${trend}`;
    this.emotion.title = (st.why || []).join("; ");
    this.emotion.dataset.emotion = st.emotion;
  }

  renderMetrics(ev) {
    this.lastMetrics = ev;
    const ratio = ev.talk_ratio || {};
    const cust = Math.round((ratio.customer ?? 0) * 100), agent = Math.round((ratio.agent ?? 0) * 100);
    const bar = h("div", { class: "ratio", role: "img", "aria-label": `Talk ratio: customer ${cust} %, agent ${agent} %` },
      h("span", { class: "ratio-customer", style: `width:${cust}%` }),
      h("span", { class: "ratio-agent", style: `width:${agent}%` }));
    this.silenceDd = h("dd", { class: "silence" });
    this.paceDd = h("dd", { class: "pace", title: "Words per second while the agent's voice is heard" });
    this.metricsList.replaceChildren(
      h("dt", { text: "Talk ratio" }), h("dd", {}, bar, h("span", { class: "ratio-text", text: `customer ${cust} % · agent ${agent} %` })),
      h("dt", { text: "Silence" }), this.silenceDd,
      h("dt", { text: "Agent pace" }), this.paceDd,
      h("dt", { text: "Overtalk" }), h("dd", { text: ev.overtalk_s == null ? "–" : `${ev.overtalk_s.toFixed(1)} s` }),
      h("dt", { text: "Call time" }), h("dd", { class: "calltime", text: fmtTime(this.now) }));
    this.paintPace();
    this.tick();
  }

  // The number is shown as measured; "fast" (red) is the cue engine's verdict, from its own
  // calibrated measure, so the panel never calls the agent fast when the engine does not.
  paintPace() {
    if (!this.paceDd) return;
    const pace = (this.lastMetrics || {}).agent_wps;
    const fast = this.paceCueAt !== null && this.now - this.paceCueAt <= CallView.PACE_CUE_WINDOW_S;
    this.paceDd.className = `pace${fast ? " warn" : ""}`;
    this.paceDd.textContent = pace == null ? (fast ? "fast" : "–") : `${pace.toFixed(1)} words/s${fast ? " (fast)" : ""}`;
  }

  // The stream to the server dropped (`false`) or is back (`true`). Silence cannot be told
  // from a lost connection meanwhile: the count stops, and starts again from the reconnect
  // (an outside audit saw a dropped connection turn the silence red as dead air).
  // `label`: what the silence field says while no events come ("no updates" while the
  // socket is open but quiet: a hold or a stalled network path, not a silent caller).
  connection(up, label = "not connected") {
    this.offline = !up;
    this.offlineLabel = label;
    if (up) this.lastSpeechWall = Date.now();
    this.tick();
  }

  tick() {
    if (!this.silenceDd) return;
    if (this.offline && !this.ended) {
      this.silenceDd.textContent = this.offlineLabel || "not connected";
      this.silenceDd.className = "silence";
      return;
    }
    const quiet = this.ended ? 0 : (Date.now() - this.lastSpeechWall) / 1000;
    this.silenceDd.textContent = this.ended ? "call ended" : quiet < 2 ? "speaking" : `${Math.floor(quiet)} s`;
    this.silenceDd.className = `silence${quiet >= 8 ? " warn" : ""}`;
    const ct = this.metricsList.querySelector(".calltime");
    if (ct) ct.textContent = fmtTime(this.now);
  }
}

// Escape closes the "Missed a cue?" form the focus is in and gives the focus to its summary
// (both pages: the agent's transcript and the supervisor's post-call review).
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape" || !document.activeElement) return;
  const form = document.activeElement.closest("details.missed[open]");
  if (!form) return;
  form.open = false;
  form.querySelector("summary").focus({ preventScroll: true });
});
