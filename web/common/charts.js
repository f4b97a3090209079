// Small inline-SVG charts, no library: the live valence/arousal trend and the post-call arc.
"use strict";
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function el(name, attrs = {}, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function scales(width, height, pad, tMax) {
    const x = (t) => pad + (Math.max(0, t) / Math.max(tMax, 1e-6)) * (width - 2 * pad);
    const y = (v) => pad + (1 - (v + 1) / 2) * (height - 2 * pad); // -1..1, +1 at the top
    return { x, y };
  }

  function frame(svg, width, height, pad, label) {
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    svg.replaceChildren(el("title", {}, label));
    svg.append(el("rect", { x: 0, y: 0, width, height, class: "chart-bg" }));
    const mid = pad + (height - 2 * pad) / 2;
    svg.append(el("line", { x1: pad, x2: width - pad, y1: mid, y2: mid, class: "chart-zero" }));
  }

  function polyline(points, x, y, cls) {
    return el("polyline", {
      points: points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
      class: cls,
      fill: "none",
    });
  }

  // points: [{t, valence, arousal}] in call time; arousal 0..1 is drawn on the same -1..1 axis.
  function trend(svg, points, { width = 260, height = 90 } = {}) {
    const pad = 6;
    const tMax = points.length ? points[points.length - 1].t : 1;
    const last = points[points.length - 1];
    const label = last
      ? `Customer trend over ${Math.round(tMax)} s: valence ${last.valence.toFixed(2)}, arousal ${last.arousal.toFixed(2)}`
      : "Customer trend: no customer speech yet";
    frame(svg, width, height, pad, label);
    if (!points.length) return;
    const { x, y } = scales(width, height, pad, tMax);
    svg.append(polyline(points.map((p) => [p.t, p.arousal * 2 - 1]), x, y, "line-arousal"));
    svg.append(polyline(points.map((p) => [p.t, p.valence]), x, y, "line-valence"));
    svg.append(el("circle", { cx: x(last.t), cy: y(last.valence), r: 3, class: "dot-valence" }));
  }

  // Cue labels a few seconds apart would print over each other: each goes on the first of
  // LABEL_ROWS rows where it fits (right of its line, or left of it near the right edge).
  // One that fits nowhere is counted on the label before it ("frustration +2"); every mark
  // keeps its line and its tooltip.
  const LABEL_ROWS = 4, LABEL_ROW = 12, CHAR_W = 6; // 10px text: about 6px a character
  function layoutLabels(xs, texts, { width, pad }) {
    const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
    const rowsEnd = new Array(LABEL_ROWS).fill(-Infinity);
    const out = xs.map(() => ({ text: "", x: 0, row: 0, anchor: "start" }));
    let last = null; // the label placed most recently
    for (const i of order) {
      const w = texts[i].length * CHAR_W;
      const right = xs[i] + 3 + w <= width - pad;
      const [from, to] = right ? [xs[i] + 3, xs[i] + 3 + w] : [xs[i] - 3 - w, xs[i] - 3];
      const row = rowsEnd.findIndex((end) => end + 4 <= from);
      if (row >= 0) {
        rowsEnd[row] = to;
        last = out[i] = { text: texts[i], base: texts[i], more: 0, x: right ? from : to, row, anchor: right ? "start" : "end" };
      } else if (last && last.anchor === "start") {
        last.more += 1;
        last.text = `${last.base} +${last.more}`;
        rowsEnd[last.row] = Math.max(rowsEnd[last.row], last.x + last.text.length * CHAR_W);
      }
    }
    return out;
  }

  // arc: [[t, valence]], cues: [{t, cue, title, severity}], duration in seconds.
  function arc(svg, arcPoints, cues, duration, { width = 720, height = 180 } = {}) {
    const pad = 18;
    const tMax = Math.max(duration || 0, ...arcPoints.map((p) => p[0]), 1);
    frame(svg, width, height, pad, `Emotional arc over ${Math.round(tMax)} s with ${cues.length} cue(s) marked`);
    const { x, y } = scales(width, height, pad, tMax);
    for (const [v, text] of [[1, "+1"], [0, "0"], [-1, "-1"]]) {
      svg.append(el("text", { x: 2, y: y(v) + 4, class: "chart-axis" }, text));
    }
    svg.append(el("text", { x: width - pad, y: height - 4, class: "chart-axis", "text-anchor": "end" }, `${Math.round(tMax)} s`));
    const labels = layoutLabels(cues.map((c) => x(c.t)), cues.map((c) => c.cue), { width, pad });
    cues.forEach((c, i) => {
      const g = el("g", { class: `cue-mark ${c.severity === "critical" ? "critical" : ""}`, "data-cue": c.cue });
      g.append(el("title", {}, `${c.title || c.cue} at ${c.t.toFixed(1)} s`));
      g.append(el("line", { x1: x(c.t), x2: x(c.t), y1: pad, y2: height - pad }));
      const l = labels[i];
      if (l.text) {
        g.append(el("text", { x: l.x, y: pad + 10 + l.row * LABEL_ROW, class: "chart-axis", "text-anchor": l.anchor }, l.text));
      }
      svg.append(g);
    });
    if (arcPoints.length) {
      svg.append(polyline(arcPoints, x, y, "line-valence"));
      for (const [t, v] of arcPoints) svg.append(el("circle", { cx: x(t), cy: y(v), r: 2.5, class: "dot-valence" }));
    }
  }

  return { trend, arc };
})();
