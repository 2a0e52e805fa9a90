// The task board: a snapshot (`GET /api/tasks`, whose `head` is the tasks stream's seq), then live
// `task.*` events from head+1. A card's HTML output is agent-made: it is shown only inside a
// sandboxed frame with no scripts (`sandbox=""`), after the server's sanitizer.

import * as api from './api.js';
import { clear, fmtDate, h, timingView } from './dom.js';
import { retry } from './retry.js';

const STATUSES = ['pending', 'in_progress', 'completed', 'failed', 'cancelled'];
const STATUS_LABELS = {
  pending: 'Pending', in_progress: 'In progress', completed: 'Completed', failed: 'Failed', cancelled: 'Cancelled',
};
// Inside the frame: no scripts, no fetches, no frames, inline styles, and only images the output
// carries itself (data: URLs). A remote image would tell its server who read the card and when (a
// tracking pixel), so none loads; the page's own CSP, which the frame inherits, says the same.
const FRAME_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:";
const FRAME_STYLE = `html{color-scheme:dark}body{margin:0;padding:12px;background:#15171c;color:#e0e0e0;
font:14px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;overflow-wrap:anywhere}a{color:#61afef}
pre{white-space:pre-wrap}img{max-width:100%}table{max-width:100%}`;

export function frameDocument(output) {
  return `<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="${FRAME_CSP}">`
    + `<style>${FRAME_STYLE}</style></head><body>${output}</body></html>`;
}

export class BoardView extends EventTarget {
  constructor({ net, root, onToast, metrics }) {
    super();
    this.net = net;
    this.root = root; // { list, statusFilter, tagFilter, search }
    this.toast = onToast;
    this.metrics = metrics;
    this.tasks = new Map();
    this.cards = new Map();
    this.filter = { status: '', tag: '', text: '' };
    this.sub = null;
    this.loading = false;
    this.unseen = 0;
    this.visible = false;
    root.tagFilter.addEventListener('change', () => this.setFilter({ tag: root.tagFilter.value }));
    root.search.addEventListener('input', () => this.setFilter({ text: root.search.value.trim().toLowerCase() }));
    this.renderFilters();
  }

  async start() {
    if (this.sub || this.loading) return;
    this.loading = true;
    const head = await retry(() => this.loadSnapshot());
    this.sub = this.net.subscribe({
      stream: 'tasks', path: '/api/stream/tasks', from: head + 1,
      onEvent: (envelope) => this.onEvent(envelope),
      onReset: () => this.reload(),
    });
    this.loading = false;
  }

  async loadSnapshot() {
    const snapshot = await api.get('/api/tasks?limit=1000');
    this.tasks = new Map(snapshot.tasks.map((task) => [task.id, task]));
    for (const card of this.cards.values()) card.remove();
    this.cards = new Map();
    for (const task of this.sorted()) this.upsert(task, { quiet: true });
    this.renderFilters();
    this.metrics.tasksSeq = snapshot.head;
    return snapshot.head;
  }

  async reload() {
    this.held = this.held || [];
    const head = await retry(() => this.loadSnapshot());
    const held = this.held;
    this.held = null;
    for (const envelope of held) if (envelope.seq > head) this.onEvent(envelope);
  }

  onEvent(envelope) {
    if (this.held) {
      this.held.push(envelope);
      return;
    }
    this.metrics.tasksSeq = envelope.seq;
    const data = envelope.data || {};
    if (envelope.type === 'task.created' || envelope.type === 'task.updated') {
      const isNew = !this.tasks.has(data.task.id);
      this.tasks.set(data.task.id, data.task);
      this.upsert(data.task, { quiet: !isNew });
    } else if (envelope.type === 'task.deleted') {
      this.tasks.delete(data.id);
      const card = this.cards.get(data.id);
      if (card) card.remove();
      this.cards.delete(data.id);
    }
    this.renderFilters();
  }

  sorted() {
    return [...this.tasks.values()].sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1
      : a.id < b.id ? 1 : -1));
  }

  setVisible(visible) {
    this.visible = visible;
    if (visible) this.unseen = 0;
    this.dispatchEvent(new CustomEvent('change'));
  }

  setFilter(change) {
    Object.assign(this.filter, change);
    this.renderFilters();
    for (const [id, card] of this.cards) card.hidden = !this.matches(this.tasks.get(id));
    this.updateEmpty();
  }

  matches(task) {
    const { status, tag, text } = this.filter;
    if (status && task.status !== status) return false;
    if (tag && !(task.tags || []).includes(tag)) return false;
    if (text) {
      const hay = `${task.title} ${task.description} ${task.scope} ${(task.tags || []).join(' ')}`.toLowerCase();
      if (!hay.includes(text)) return false;
    }
    return true;
  }

  renderFilters() {
    const counts = { '': this.tasks.size };
    const tags = new Set();
    for (const task of this.tasks.values()) {
      counts[task.status] = (counts[task.status] || 0) + 1;
      for (const tag of task.tags || []) tags.add(tag);
    }
    clear(this.root.statusFilter).append(...['', ...STATUSES].map((status) => h('button', {
      type: 'button', class: `chip status-chip${this.filter.status === status ? ' active' : ''}`,
      'aria-pressed': String(this.filter.status === status), 'data-status': status || 'all',
      onclick: () => this.setFilter({ status }),
    }, status ? STATUS_LABELS[status] : 'All', h('span', { class: 'n' }, String(counts[status] || 0)))));
    const select = this.root.tagFilter;
    const current = this.filter.tag;
    clear(select).append(h('option', { value: '' }, 'All tags'),
      ...[...tags].sort().map((tag) => h('option', { value: tag }, tag)));
    select.value = tags.has(current) ? current : '';
    this.updateEmpty();
  }

  updateEmpty() {
    let note = this.root.list.querySelector('.empty-note');
    const anyVisible = [...this.cards.values()].some((card) => !card.hidden);
    if (!note) {
      note = h('div', { class: 'empty-note' });
      this.root.list.append(note);
    }
    note.textContent = this.tasks.size ? 'No task matches these filters.' : 'No tasks yet. Agents publish cards here.';
    note.hidden = anyVisible;
  }

  upsert(task, { quiet = false } = {}) {
    let card = this.cards.get(task.id);
    const fresh = !card;
    if (fresh) {
      card = h('article', { class: 'task', 'data-id': task.id });
      this.cards.set(task.id, card);
      this.place(task, card);
      if (!quiet && !this.visible) {
        this.unseen += 1;
        this.dispatchEvent(new CustomEvent('change'));
      }
    }
    paintCard(card, task, this);
    card.hidden = !this.matches(task);
    if (fresh && !quiet) {
      card.classList.add('arrived');
      setTimeout(() => card.classList.remove('arrived'), 1600);
    }
  }

  place(task, card) {
    const order = this.sorted();
    const index = order.findIndex((t) => t.id === task.id);
    for (let i = index + 1; i < order.length; i += 1) {
      const next = this.cards.get(order[i].id);
      if (next && next !== card && next.parentNode === this.root.list) {
        this.root.list.insertBefore(card, next);
        return;
      }
    }
    const note = this.root.list.querySelector('.empty-note');
    this.root.list.insertBefore(card, note);
  }

  async choose(task, choice, button) {
    const buttons = button.parentNode.querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const result = await api.post(`/api/tasks/${encodeURIComponent(task.id)}/choose`, { value: choice.value });
      this.dispatchEvent(new CustomEvent('chosen', { detail: { task: result.task || task, turn: result.turn } }));
    } catch (error) {
      this.toast(`Could not send “${choice.label}”: ${error.message}`, 'error');
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }
}

function paintCard(card, task, board) {
  const context = task.context || {};
  card.className = `task status-${task.status}${card.classList.contains('arrived') ? ' arrived' : ''}`;
  const head = h('header', { class: 'task-head' },
    h('span', { class: `badge status-badge status-${task.status}` }, STATUS_LABELS[task.status] || task.status),
    h('h3', { class: 'task-title' }, task.title),
    task.scope ? h('span', { class: 'task-scope' }, task.scope) : null);
  const description = task.description ? h('p', { class: 'task-desc' }, task.description) : null;
  const meta = h('div', { class: 'task-meta' },
    h('span', { class: 'tags' }, (task.tags || []).map((tag) => h('button', {
      type: 'button', class: 'tag', title: `Show only “${tag}”`, onclick: () => board.setFilter({ tag }),
    }, tag))),
    h('span', { class: 'task-when' }, fmtDate(task.createdAt)),
    task.createdBy ? h('span', { class: 'task-by' }, `by ${task.createdBy}`) : null);
  const timing = context.turnTiming ? timingView(context.turnTiming) : null;

  const sections = [head, description, meta, timing].filter(Boolean);
  sections.push(outputSection(card, context.output));
  const choices = context.choices || [];
  if (choices.length) {
    sections.push(h('section', { class: 'task-actions' },
      h('div', { class: 'label' }, 'Quick Actions'),
      h('div', { class: 'choices' }, choices.map((choice) => {
        const chosen = context.chosen === choice.value;
        return h('button', {
          type: 'button', class: `choice${choice.primary ? ' primary' : ''}${chosen ? ' chosen' : ''}`,
          title: choice.value, 'data-value': choice.value,
          onclick: (event) => board.choose(task, choice, event.currentTarget),
        }, chosen ? `✓ ${choice.label}` : choice.label);
      })),
      task.session ? h('div', { class: 'hint' }, `Answers go to session ${task.session}`) : null));
  }
  sections.push(detailsSection(task));
  // Keep the frame (and its loaded document) when the output did not change.
  const oldOutput = card.querySelector(':scope > .task-output');
  const newOutput = sections.find((s) => s && s.classList && s.classList.contains('task-output'));
  if (oldOutput && newOutput && oldOutput.dataset.output === newOutput.dataset.output) {
    sections[sections.indexOf(newOutput)] = oldOutput;
  }
  const openDetails = card.querySelector(':scope > .task-details')?.open;
  clear(card).append(...sections.filter(Boolean));
  if (openDetails) card.querySelector(':scope > .task-details').open = true;
}

function outputSection(card, output) {
  if (!output) return null;
  const frame = h('iframe', {
    class: 'task-frame', sandbox: '', referrerpolicy: 'no-referrer', loading: 'lazy',
    title: 'Task output (sandboxed)', style: `height:${Math.max(140, Math.min(520, 110 + output.length / 10))}px`,
  });
  frame.srcdoc = frameDocument(output);
  const expand = h('button', {
    type: 'button', class: 'link-button',
    onclick: () => {
      const on = frame.classList.toggle('expanded');
      expand.textContent = on ? 'Collapse' : 'Expand';
    },
  }, 'Expand');
  const section = h('section', { class: 'task-output' }, h('div', { class: 'label' }, 'Output', expand), frame);
  section.dataset.output = String(output.length) + ':' + hash(output);
  return section;
}

function detailsSection(task) {
  const context = task.context || {};
  const rows = [
    ['Type', task.type], ['Status', STATUS_LABELS[task.status] || task.status], ['Scope', task.scope],
    ['Tags', (task.tags || []).join(', ')], ['Created', fmtDate(task.createdAt)], ['Updated', fmtDate(task.updatedAt)],
    ['Created By', task.createdBy], ['Target User', task.targetUser], ['Session', task.session],
    ['Chosen', context.chosen], ['Request', task.requestId || context.requestId],
  ].filter(([, value]) => value);
  return h('details', { class: 'task-details' }, h('summary', {}, 'Details'),
    h('dl', {}, rows.map(([name, value]) => [h('dt', {}, name), h('dd', {}, String(value))])),
    h('details', { class: 'raw' }, h('summary', {}, 'Raw Data'), h('pre', { class: 'code' }, JSON.stringify(task, null, 2))));
}

function hash(text) {
  let value = 0;
  for (let i = 0; i < text.length; i += 1) value = (value * 31 + text.charCodeAt(i)) | 0;
  return value.toString(36);
}
