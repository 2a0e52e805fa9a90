// Markdown for agent text, parsed by markdown-it (vendored: `make vendor`) and built into elements
// with `h()`. Nothing the agent wrote is ever parsed as HTML: markdown-it runs with `html: false`
// (so `<script>` stays text), and this file turns its token stream into DOM nodes itself, never
// through its HTML renderer. A link keeps its href only for absolute http(s) URLs; any other link
// (javascript:, data:, relative) is not made, and what was written shows as text.

import { h } from './dom.js';
import MarkdownIt from './vendor/markdown-it.js';

const md = new MarkdownIt({ html: false, linkify: true, breaks: true, typographer: false });
// Bare links only with a scheme: `app.py` and `notes.md` are file names, not web sites.
md.linkify.set({ fuzzyLink: false, fuzzyEmail: false, fuzzyIP: false });
md.validateLink = (url) => safeUrl(url) !== null;

const TAGS = {
  paragraph: 'p', blockquote: 'blockquote', bullet_list: 'ul', ordered_list: 'ol', list_item: 'li',
  thead: 'thead', tbody: 'tbody', tr: 'tr', th: 'th', td: 'td', em: 'em', strong: 'strong', s: 'del',
};
const ALIGN = /^text-align:(left|right|center)$/;
const TASK = /^\[([ xX])\]\s+/;

export function renderMarkdown(source) {
  const root = document.createDocumentFragment();
  build(md.parse(String(source || ''), {}), root);
  return root;
}

export function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

// markdown-it's tokens are flat with `nesting` +1 (open), -1 (close), 0 (leaf); an `inline` token
// holds its spans as `children`, built the same way.
function build(tokens, parent) {
  const stack = [parent];
  tokens.forEach((token, index) => {
    const top = stack[stack.length - 1];
    if (token.nesting === 1) {
      const el = open(token, tokens, index);
      if (el) top.append(el.parentNode || el); // a table comes in its scrolling wrapper
      stack.push(el || top);
    } else if (token.nesting === -1) {
      stack.pop();
    } else {
      leaf(token, top);
    }
  });
}

function open(token, tokens, index) {
  const type = token.type.replace(/_open$/, '');
  if (type === 'paragraph' && token.hidden) return null; // a tight list's item: no <p>
  if (type === 'heading') return h(token.tag);
  if (type === 'link') {
    const href = safeUrl(token.attrGet('href'));
    return href ? h('a', { href, target: '_blank', rel: 'noopener noreferrer nofollow' }) : null;
  }
  if (type === 'table') {
    const table = h('table');
    h('div', { class: 'table-wrap' }, table);
    return table;
  }
  if (type === 'ordered_list') {
    const start = Number(token.attrGet('start') || 1);
    return h('ol', start !== 1 ? { start } : {});
  }
  if (type === 'th' || type === 'td') {
    const style = token.attrGet('style');
    return h(type, style && ALIGN.test(style) ? { style } : {});
  }
  if (type === 'list_item') return listItem(tokens, index);
  return TAGS[type] ? h(TAGS[type]) : null;
}

// `- [ ] todo` / `- [x] done`: a check mark instead of the brackets.
function listItem(tokens, index) {
  const li = h('li');
  const inline = tokens[index + 1]?.type === 'paragraph_open' ? tokens[index + 2] : null;
  const first = inline?.type === 'inline' ? inline.children[0] : null;
  const task = first?.type === 'text' ? TASK.exec(first.content) : null;
  if (task) {
    first.content = first.content.slice(task[0].length);
    const done = task[1] !== ' ';
    li.classList.add('task-item');
    li.append(h('span', { class: done ? 'check done' : 'check', 'aria-hidden': 'true' }, done ? '☑ ' : '☐ '));
  }
  return li;
}

function leaf(token, parent) {
  switch (token.type) {
    case 'inline':
      build(token.children || [], parent);
      break;
    case 'text':
    case 'html_inline':
    case 'html_block':
      parent.append(token.content);
      break;
    case 'code_inline':
      parent.append(h('code', {}, token.content));
      break;
    case 'softbreak':
    case 'hardbreak':
      parent.append(h('br'));
      break;
    case 'fence':
    case 'code_block': {
      const lang = (token.info || '').trim().split(/\s+/)[0].replace(/[^\w+#-]/g, '');
      const code = h('code', lang ? { class: `lang-${lang}` } : {}, token.content.replace(/\n$/, ''));
      parent.append(h('pre', { class: 'code' }, code));
      break;
    }
    case 'hr':
      parent.append(h('hr'));
      break;
    case 'image': {
      // No images from agent text: its alt text, linked to the image when the URL is http(s).
      const href = safeUrl(token.attrGet('src'));
      const alt = token.content || token.attrGet('src') || '';
      parent.append(href ? h('a', { href, target: '_blank', rel: 'noopener noreferrer nofollow' }, alt) : alt);
      break;
    }
    default:
      if (token.content) parent.append(token.content);
  }
}
