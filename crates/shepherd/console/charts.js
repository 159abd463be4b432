// Small SVG charts for the console (no library): bars and a line over labelled points.
// Each chart is an <svg role="img"> with an aria-label summing it up and a <title> per point.
"use strict";
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 600, H = 200, PAD_L = 90, PAD_B = 26, PAD_T = 20;

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function frame(label, points, format) {
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", preserveAspectRatio: "none" });
    const total = points.reduce((sum, p) => sum + p.value, 0);
    svg.setAttribute("aria-label", `${label}: ${points.length} points, total ${format(total)}`);
    const max = Math.max(1e-9, ...points.map((p) => p.value));
    el("line", { x1: PAD_L, y1: H - PAD_B, x2: W, y2: H - PAD_B, class: "axis" }, svg);
    const top = el("text", { x: 2, y: PAD_T }, svg);
    top.textContent = format(max);
    const zero = el("text", { x: 2, y: H - PAD_B }, svg);
    zero.textContent = "0";
    if (points.length) {
      const first = el("text", { x: PAD_L, y: H - 4 }, svg);
      first.textContent = points[0].label;
      const last = el("text", { x: W - 4, y: H - 4, "text-anchor": "end" }, svg);
      last.textContent = points[points.length - 1].label;
    }
    const y = (v) => H - PAD_B - (v / max) * (H - PAD_B - PAD_T);
    return { svg, y, step: (W - PAD_L) / Math.max(1, points.length) };
  }

  function bars(label, points, format = String) {
    const { svg, y, step } = frame(label, points, format);
    points.forEach((p, i) => {
      const rect = el("rect", { class: "bar", x: PAD_L + i * step + step * 0.1, width: Math.max(1, step * 0.8),
        y: y(p.value), height: Math.max(0, H - PAD_B - y(p.value)) }, svg);
      el("title", {}, rect).textContent = `${p.label}: ${format(p.value)}`;
    });
    return svg;
  }

  function line(label, points, format = String) {
    const { svg, y, step } = frame(label, points, format);
    const coords = points.map((p, i) => `${PAD_L + i * step + step / 2},${y(p.value)}`);
    if (coords.length) el("polyline", { class: "line", points: coords.join(" ") }, svg);
    points.forEach((p, i) => {
      const dot = el("circle", { cx: PAD_L + i * step + step / 2, cy: y(p.value), r: 3, class: "bar" }, svg);
      el("title", {}, dot).textContent = `${p.label}: ${format(p.value)}`;
    });
    return svg;
  }

  return { bars, line };
})();
