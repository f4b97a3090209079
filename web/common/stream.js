// One call's event stream (WS /ws/calls/{id}/events) that survives network blips: it
// reconnects with capped exponential backoff and asks the server to replay only what came
// after the last `seq` it handled (`after_seq`), and it drops anything at or before that
// seq, so a reconnect never shows an event twice.
//
// How the server ends a stream, and what the page is told:
//   1000           the call ended (its `call_end` came first)          -> onEnded
//   4404           no such call anywhere (e.g. it ended while the server was down: nothing
//                  of it survived the restart); not a permission problem -> onMissing
//   1008 "unauthorized"  the token expired or is invalid                 -> the sign-in form
//   1008 otherwise       not allowed to see this call                    -> onRefused
//   1013 "moved"   a draining instance handed the call over to another: reconnect and resume
//   anything else  a blip: reconnect and resume
// A socket that stays open but brings nothing for STALE_MS (a live call sends metrics every
// 5 s of audio) is taken for a dead network path, which the browser may not notice for
// minutes: it is dropped and the stream resumes like after any other blip. Before that, after
// QUIET_MS without a message, the page is told ("quiet"), so that it does not count a stalled
// feed as silence on the line (an outside UI audit: ten seconds offline read as a silent
// caller, in red); and when the browser says it went offline ("offline") it is told at once,
// and the stream reconnects as soon as the browser is back online.
// The server sends {"type": "error", code, message} just before each refusal.
"use strict";
class EventStream {
  static NOT_FOUND = 4404;
  static STALE_MS = 20000;
  static QUIET_MS = 8000;

  constructor(callId, { onEvent, onStatus, onEnded, onRefused, onMissing }) {
    this.callId = callId;
    this.lastSeq = 0;
    this.handlers = { onEvent, onStatus, onEnded, onRefused, onMissing };
    this.retry = 0;
    this.socket = null;
    this.stopped = false;
    this.reconnects = 0;
    this.quiet = false;
    this.connect();
    this.watchdog = setInterval(() => this.checkStale(), 1000);
    this.onOffline = () => { if (!this.stopped) this.handlers.onStatus?.("offline"); };
    this.onOnline = () => { if (!this.stopped) this.drop("online"); };
    window.addEventListener("offline", this.onOffline);
    window.addEventListener("online", this.onOnline);
  }

  checkStale() {
    const socket = this.socket;
    if (this.stopped) clearInterval(this.watchdog);
    if (this.stopped || !socket || socket.readyState !== WebSocket.OPEN) return;
    const silent = Date.now() - this.lastMessageAt;
    if (silent > EventStream.QUIET_MS && !this.quiet) {
      this.quiet = true;
      this.handlers.onStatus?.("quiet");
    }
    if (silent > EventStream.STALE_MS) this.drop("stale");
  }

  // Forget the socket now (its close handshake may never complete) and reconnect.
  drop(reason) {
    const socket = this.socket;
    if (!socket || socket.readyState === WebSocket.CLOSED) return;
    socket.onmessage = null;
    socket.onclose = null;
    socket.close();
    this.closed(socket, { code: 4000, reason });
  }

  url() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const q = Auth.socketQuery(new URLSearchParams({ after_seq: String(this.lastSeq) }));
    return `${proto}://${location.host}/ws/calls/${encodeURIComponent(this.callId)}/events?${q}`;
  }

  connect() {
    const socket = new WebSocket(this.url(), Auth.socketProtocols());
    this.socket = socket;
    this.refusal = null; // an error message belongs to the connection it came on
    this.lastMessageAt = Date.now();
    socket.onopen = () => {
      this.lastMessageAt = Date.now();
      this.quiet = false;
      this.retry = 0;
      this.handlers.onStatus?.("live");
    };
    socket.onmessage = (m) => {
      if (this.socket !== socket || this.stopped) return;
      this.lastMessageAt = Date.now();
      if (this.quiet) {
        this.quiet = false;
        this.handlers.onStatus?.("live");
      }
      const ev = JSON.parse(m.data);
      if (ev.type === "error") {
        this.refusal = ev;
        return;
      }
      if (ev.seq) {
        if (ev.seq <= this.lastSeq) return; // already shown before a reconnect
        this.lastSeq = ev.seq;
      }
      this.handlers.onEvent(ev);
    };
    socket.onclose = (e) => this.closed(socket, e);
  }

  closed(socket, e) {
    if (this.socket !== socket || this.stopped) return;
    const refusal = this.refusal;
    this.refusal = null;
    if (e.code === 1000) {
      this.stopped = true;
      this.handlers.onEnded?.();
      return;
    }
    if (e.code === EventStream.NOT_FOUND || (refusal && refusal.code === "unknown_call")) {
      // The server has no such call: retrying cannot bring it back, and it is not a
      // permission problem, so what was already shown of it stays on screen.
      this.stopped = true;
      const missing = refusal || { code: "unknown_call", message: e.reason };
      if (this.handlers.onMissing) this.handlers.onMissing(missing);
      else this.handlers.onEnded?.();
      return;
    }
    if (e.code === 1008) {
      this.stopped = true;
      // An expired or invalid token is no verdict on this call: sign in again, as a REST 401
      // does (auth.js). The reason is the fallback should the error message be missing.
      const unauthorized = refusal ? refusal.code === "unauthorized" : /token/i.test(e.reason || "");
      if (unauthorized) {
        if (Auth.socketFallback(refusal, socket.url)) {
          this.stopped = false;
          this.connect(); // an older server: the token once more, in the address
          return;
        }
        Auth.expired();
        return;
      }
      // Not allowed to see this call: stop, and show nothing of it.
      this.handlers.onRefused?.(refusal || { code: "forbidden", message: e.reason });
      return;
    }
    this.retry = Math.min(this.retry + 1, 5);
    this.reconnects += 1;
    this.handlers.onStatus?.("reconnecting");
    setTimeout(() => { if (!this.stopped) this.connect(); }, 250 * 2 ** this.retry);
  }

  close() {
    this.stopped = true;
    clearInterval(this.watchdog);
    window.removeEventListener("offline", this.onOffline);
    window.removeEventListener("online", this.onOnline);
    if (this.socket) this.socket.close(1000);
  }
}

// What to say when the server knows no such call (4404). A call that was showing and is gone
// was lost in a restart; one that never showed anything was most likely mistyped (an outside
// audit: a typo was told the call "may have ended before the server restarted").
function missingText(callId, stream, hint = "") {
  if (stream && stream.lastSeq > 0) return `Call ${callId} was not found: it may have ended before the server restarted.`;
  return `No call ${callId} is live or stored: check the id${hint}.`;
}

// "X~3" -> {base: "X", n: 3}; "X" -> {base: "X", n: 1} (the leg ids of coach/calls.py).
function leg(callId) {
  const m = /^(.+)~(\d+)$/.exec(callId);
  return m ? { base: m[1], n: Number(m[2]) } : { base: callId, n: 1 };
}

function isLaterLeg(callId, earlierId) {
  const next = leg(callId), prev = leg(earlierId);
  return next.base === prev.base && next.n > prev.n;
}
