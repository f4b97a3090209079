// Text whose contrast with what is behind it is below WCAG AA: 4.5:1, or 3:1 for large text
// (24 px, or 18.66 px bold). The backdrop is every background colour from the page down to
// the element, each weighed by its alpha and by the opacity of its box and the boxes around it.
// Used by tests/web/test_contrast.py.
(() => {
  const rgba = (s) => {
    const m = s.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const over = (top, a, under) => ({
    r: top.r * a + under.r * (1 - a), g: top.g * a + under.g * (1 - a), b: top.b * a + under.b * (1 - a),
  });
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const ratio = (x, y) => { const [a, b] = [lum(x), lum(y)].sort((p, q) => q - p); return (a + 0.05) / (b + 0.05); };
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    // Disabled controls are exempt (WCAG 1.4.3: inactive user interface components).
    if (!own || el.closest("[hidden], .sr-only, svg, option, script, style, :disabled")) continue;
    const box = el.getBoundingClientRect();
    if (!box.width || !box.height || getComputedStyle(el).visibility === "hidden") continue;
    const chain = [];
    for (let e = el; e; e = e.parentElement) chain.unshift(e);
    let back = { r: 255, g: 255, b: 255 };
    let opacity = 1;
    for (const e of chain) {
      const st = getComputedStyle(e);
      opacity *= Number(st.opacity);
      const bg = rgba(st.backgroundColor);
      if (bg && bg.a > 0) back = over(bg, bg.a * opacity, back);
    }
    const st = getComputedStyle(el);
    const fg = rgba(st.color);
    const text = over(fg, fg.a * opacity, back);
    const size = parseFloat(st.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(st.fontWeight) >= 700);
    const r = ratio(text, back);
    if (r < (large ? 3 : 4.5)) {
      const t = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent.trim()).join(" ");
      out.push(`${el.tagName.toLowerCase()}.${[...el.classList].join(".")} "${t.slice(0, 40)}" ${r.toFixed(2)}:1`);
    }
  }
  return out;
})()
