// A small, safe Markdown renderer for agent text. It never parses HTML: every character of the
// source ends up in a text node (so `<script>` shows as text), and the only elements it makes are
// headings, paragraphs, emphasis, code, lists, quotes, rules, tables and links. A link keeps its
// href only for http(s) URLs; anything else (javascript:, data:, relative) stays plain text.

import { h } from './dom.js';

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

export function renderMarkdown(source) {
  const root = document.createDocumentFragment();
  blocks(String(source || '').replace(/\r\n?/g, '\n').split('\n'), root);
  return root;
}

function blocks(lines, parent) {
  let i = 0;
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) {
      const p = h('p');
      paragraph.forEach((line, index) => {
        if (index) p.append(h('br'));
        inline(line, p);
      });
      parent.append(p);
      paragraph = [];
    }
  };
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      flush();
      const fence = m[1];
      const body = [];
      i += 1;
      while (i < lines.length && !(lines[i].trim().startsWith(fence[0].repeat(fence.length))
        && /^\s*([`~])\1*\s*$/.test(lines[i]))) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1;
      const code = h('code', m[2] ? { class: `lang-${m[2].replace(/[^\w+#-]/g, '')}` } : {}, body.join('\n'));
      parent.append(h('pre', { class: 'code' }, code));
      continue;
    }
    if (line.trim() === '') {
      flush();
      i += 1;
      continue;
    }
    if ((m = HEADING.exec(line))) {
      flush();
      const el = h(`h${m[1].length}`);
      inline(m[2], el);
      parent.append(el);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      flush();
      parent.append(h('hr'));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      flush();
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i += 1;
      }
      const quote = h('blockquote');
      blocks(inner, quote);
      parent.append(quote);
      continue;
    }
    if (ITEM.test(line)) {
      flush();
      i = list(lines, i, parent);
      continue;
    }
    if (line.includes('|') && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes('-')) {
      flush();
      i = table(lines, i, parent);
      continue;
    }
    paragraph.push(line.trim());
    i += 1;
  }
  flush();
}

function list(lines, start, parent) {
  const first = ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const el = ordered ? h('ol', Number.parseInt(first[2], 10) !== 1 ? { start: Number.parseInt(first[2], 10) } : {}) : h('ul');
  let i = start;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const body = [m[3]];
    i += 1;
    // The item goes on over lines indented deeper than its marker (nested lists, wrapped text).
    while (i < lines.length && lines[i].trim() !== '' && (/^\s/.test(lines[i]) && leading(lines[i]) > indent)) {
      body.push(lines[i].slice(Math.min(leading(lines[i]), indent + 2)));
      i += 1;
    }
    const li = h('li');
    const task = /^\[([ xX])\]\s+(.*)$/.exec(body[0]);
    if (task) {
      li.classList.add('task-item');
      li.append(h('span', { class: task[1] === ' ' ? 'check' : 'check done', 'aria-hidden': 'true' }, task[1] === ' ' ? '☐ ' : '☑ '));
      body[0] = task[2];
    }
    if (body.length === 1) inline(body[0], li);
    else blocks(body, li);
    el.append(li);
    // A blank line between items keeps the list going.
    if (i + 1 < lines.length && lines[i] !== undefined && lines[i].trim() === '') {
      const next = ITEM.exec(lines[i + 1]);
      if (next && next[1].length === indent && /\d/.test(next[2]) === ordered) i += 1;
    }
  }
  parent.append(el);
  return i;
}

function leading(line) {
  return line.length - line.trimStart().length;
}

function cells(line) {
  let text = line.trim();
  if (text.startsWith('|')) text = text.slice(1);
  if (text.endsWith('|') && !text.endsWith('\\|')) text = text.slice(0, -1);
  return text.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, '|'));
}

function table(lines, start, parent) {
  const head = cells(lines[start]);
  const aligns = cells(lines[start + 1]).map((c) => (c.startsWith(':') && c.endsWith(':') ? 'center'
    : c.endsWith(':') ? 'right' : c.startsWith(':') ? 'left' : null));
  const thead = h('thead', {}, h('tr', {}, head.map((cell, k) => {
    const th = h('th', aligns[k] ? { style: `text-align:${aligns[k]}` } : {});
    inline(cell, th);
    return th;
  })));
  const tbody = h('tbody');
  let i = start + 2;
  while (i < lines.length && lines[i].includes('|') && lines[i].trim() !== '') {
    const row = cells(lines[i]);
    tbody.append(h('tr', {}, head.map((_, k) => {
      const td = h('td', aligns[k] ? { style: `text-align:${aligns[k]}` } : {});
      inline(row[k] || '', td);
      return td;
    })));
    i += 1;
  }
  parent.append(h('div', { class: 'table-wrap' }, h('table', {}, thead, tbody)));
  return i;
}

const ESCAPABLE = /[\\`*_{}[\]()#+\-.!~>|<]/;
const CODE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/y;
const LINK = /\[((?:[^[\]\\]|\\.|\[[^\]]*\])*)\]\(\s*<?([^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)>?(?:\s+"[^"]*")?\s*\)/y;
const AUTOLINK = /<(https?:\/\/[^\s<>]+)>/y;
const BARE_URL = /https?:\/\/[^\s<>"']*[^\s<>"'.,;:!?)\]}*_~]/y;

export function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

function link(href, children) {
  return h('a', { href, target: '_blank', rel: 'noopener noreferrer nofollow' }, children);
}

// Inline spans: code, links, autolinks, emphasis (*, _, **, __), strikethrough (~~), escapes.
function inline(text, parent, { links = true } = {}) {
  let buffer = '';
  const flush = () => {
    if (buffer) parent.append(buffer);
    buffer = '';
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '\\' && i + 1 < text.length && ESCAPABLE.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (c === '`') {
      CODE.lastIndex = i;
      const m = CODE.exec(text);
      if (m) {
        flush();
        const body = m[2].length > 2 && m[2].startsWith(' ') && m[2].endsWith(' ') ? m[2].slice(1, -1) : m[2];
        parent.append(h('code', {}, body));
        i = CODE.lastIndex;
        continue;
      }
      const run = /`+/y;
      run.lastIndex = i;
      const ticks = run.exec(text)[0];
      buffer += ticks;
      i += ticks.length;
      continue;
    }
    if (links && c === '[') {
      LINK.lastIndex = i;
      const m = LINK.exec(text);
      if (m) {
        flush();
        const href = safeUrl(m[2]);
        if (href) {
          const a = link(href, []);
          inline(m[1], a, { links: false });
          parent.append(a);
        } else {
          // Not an http(s) link: show what was written, as text.
          inline(m[1], parent, { links: false });
          parent.append(` (${m[2]})`);
        }
        i = LINK.lastIndex;
        continue;
      }
    }
    if (links && c === '<') {
      AUTOLINK.lastIndex = i;
      const m = AUTOLINK.exec(text);
      const href = m && safeUrl(m[1]);
      if (href) {
        flush();
        parent.append(link(href, [m[1]]));
        i = AUTOLINK.lastIndex;
        continue;
      }
    }
    if (links && c === 'h' && (i === 0 || /[\s(]/.test(text[i - 1]))) {
      BARE_URL.lastIndex = i;
      const m = BARE_URL.exec(text);
      const href = m && safeUrl(m[0]);
      if (href) {
        flush();
        parent.append(link(href, [m[0]]));
        i = BARE_URL.lastIndex;
        continue;
      }
    }
    if (c === '*' || c === '_' || c === '~') {
      const span = emphasis(text, i);
      if (span) {
        flush();
        const el = h(span.tag);
        inline(text.slice(span.start, span.end), el, { links });
        parent.append(el);
        i = span.next;
        continue;
      }
    }
    buffer += c;
    i += 1;
  }
  flush();
}

function emphasis(text, i) {
  const c = text[i];
  const double = text[i + 1] === c;
  if (c === '~' && !double) return null;
  const marker = double ? c + c : c;
  const start = i + marker.length;
  if (start >= text.length || /\s/.test(text[start])) return null;
  // `_` only at word edges, so snake_case_names stay as they are.
  if (c === '_' && i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1])) return null;
  let j = start;
  while (j < text.length) {
    const found = text.indexOf(marker, j);
    if (found === -1) return null;
    if (!double && text[found + 1] === c) {
      // A `**` inside `*…*` belongs to a nested strong span, not to this one.
      j = found + 2;
      continue;
    }
    const before = text[found - 1];
    const after = text[found + marker.length];
    const closes = found > start && !/\s/.test(before) && before !== '\\'
      && (c !== '_' || after === undefined || !/[\p{L}\p{N}]/u.test(after));
    if (closes) {
      const tag = c === '~' ? 'del' : double ? 'strong' : 'em';
      return { tag, start, end: found, next: found + marker.length };
    }
    j = found + marker.length;
  }
  return null;
}
