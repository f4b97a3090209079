// One call's event stream (WS /ws/calls/{id}/events) that survives network blips: it
// reconnects with capped exponential backoff and asks the server to replay only what came
// after the last `seq` it handled (`after_seq`), and it drops anything at or before that
// seq, so a reconnect never shows an event twice.
"use strict";
class EventStream {
  constructor(callId, { onEvent, onStatus, onEnded, onRefused }) {
    this.callId = callId;
    this.lastSeq = 0;
    this.handlers = { onEvent, onStatus, onEnded, onRefused };
    this.retry = 0;
    this.socket = null;
    this.stopped = false;
    this.reconnects = 0;
    this.connect();
  }

  url() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const q = new URLSearchParams({ after_seq: String(this.lastSeq) });
    const token = Auth.token();
    if (token) q.set("token", token);
    return `${proto}://${location.host}/ws/calls/${encodeURIComponent(this.callId)}/events?${q}`;
  }

  connect() {
    const socket = new WebSocket(this.url());
    this.socket = socket;
    socket.onopen = () => {
      this.retry = 0;
      this.handlers.onStatus?.("live");
    };
    socket.onmessage = (m) => {
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
    socket.onclose = (e) => {
      if (this.socket !== socket || this.stopped) return;
      if (e.code === 1000) {
        this.handlers.onEnded?.();
        return;
      }
      if (e.code === 1008) {
        // Not allowed to see this call (or signed out): stop, and show nothing of it.
        this.stopped = true;
        this.handlers.onRefused?.(this.refusal || { code: "forbidden", message: e.reason });
        return;
      }
      this.retry = Math.min(this.retry + 1, 5);
      this.reconnects += 1;
      this.handlers.onStatus?.("reconnecting");
      setTimeout(() => { if (!this.stopped) this.connect(); }, 250 * 2 ** this.retry);
    };
  }

  close() {
    this.stopped = true;
    if (this.socket) this.socket.close(1000);
  }
}
