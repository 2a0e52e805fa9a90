// `h(tag, attrs, ...children)`: build elements without ever parsing a string as HTML.
// Strings become text nodes; `on*` functions become listeners; `text` sets textContent.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function fmtSeconds(ms) {
  return `${(Number(ms || 0) / 1000).toFixed(1)}s`;
}

// "⏱️ 771.6s · 63 tools · TTFE 1% · Thinking 95% · Tools 4%", as the kontask cards show timing,
// with a bar of the three shares.
export function timingView(timing, extra = []) {
  const count = Number(timing.toolCallCount || 0);
  const parts = [
    h('span', { class: 't-total' }, `⏱️ ${fmtSeconds(timing.totalMs)}`),
    h('span', { class: 't-tools' }, `${count} ${count === 1 ? 'tool' : 'tools'}`),
    h('span', { class: 't-share t-ttfe' }, `TTFE ${pct(timing.ttfePct)}%`),
    h('span', { class: 't-share t-thinking' }, `Thinking ${pct(timing.thinkingPct)}%`),
    h('span', { class: 't-share t-toolshare' }, `Tools ${pct(timing.toolsPct)}%`),
    ...extra,
  ];
  const line = h('div', { class: 'timing-line' });
  parts.forEach((part, index) => {
    if (index) line.append(h('span', { class: 'sep', 'aria-hidden': 'true' }, ' · '));
    line.append(part);
  });
  const bar = h('div', {
    class: 'timing-bar', role: 'img',
    'aria-label': `time to first event ${pct(timing.ttfePct)}%, thinking ${pct(timing.thinkingPct)}%, tools ${pct(timing.toolsPct)}%`,
  },
  h('span', { class: 'seg seg-ttfe', style: `width:${pct(timing.ttfePct)}%` }),
  h('span', { class: 'seg seg-thinking', style: `width:${pct(timing.thinkingPct)}%` }),
  h('span', { class: 'seg seg-tools', style: `width:${pct(timing.toolsPct)}%` }));
  return h('div', { class: 'timing' }, line, bar);
}

function pct(value) {
  const number = Math.round(Number(value || 0));
  return Math.max(0, Math.min(100, number));
}

const DATE_FORMAT = {
  day: 'numeric', month: 'short', year: 'numeric', hour: 'numeric', minute: '2-digit', hour12: true,
};

// "5 Jan 2026, 11:49 am", in the viewer's time zone.
export function fmtDate(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso || '');
  return date.toLocaleString('en-GB', DATE_FORMAT).replace(/\b(AM|PM)\b/, (m) => m.toLowerCase());
}

export function fmtClock(ts) {
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}
