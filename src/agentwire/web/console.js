// The console: one session's transcript (main lane, and the quick lane beside it), built from the
// session's one subscription. Agent text streams into text nodes and becomes Markdown when its
// block is done; nothing the agent wrote is ever parsed as HTML.

import * as api from './api.js';
import { clear, h, timingView } from './dom.js';
import { renderMarkdown } from './markdown.js';
import { paintPermission } from './permission.js';
import { retry } from './retry.js';
import { Transcript } from './transcript.js';

const STATE_LABELS = {
  idle: 'idle', starting: 'starting', waiting_for_model: 'waiting for model', thinking: 'thinking',
  writing: 'writing', running_tool: 'running tool', working: 'working', rate_limited: 'rate limited',
  waiting_for_permission: 'waiting for your answer',
};
const AGENT_NAMES = { 'claude-code': 'Claude Code' };

export class ConsoleView extends EventTarget {
  // `canFocus()`: whether a new permission card may take the focus (nobody is typing elsewhere).
  constructor({ net, lanes, onToast, metrics, canFocus }) {
    super();
    this.net = net;
    this.canFocus = canFocus || (() => false);
    this.lanes = lanes; // { main: Element, quick: Element }
    this.toast = onToast;
    this.metrics = metrics;
    this.session = null;
    this.sub = null;
    this.fold = new Transcript();
    this.views = new Map(); // entry → { el, text? }
    this.turnEls = new Map(); // turn id → { article, body, user }
    this.buffer = null; // events held while a snapshot reloads
    this.stick = { main: true, quick: true };
    this.scrollQueued = false;
    this.lastTop = { main: 0, quick: 0 };
    for (const [lane, el] of Object.entries(lanes)) {
      // Follow the stream while the reader is at the bottom; stop once they scroll up. Content that
      // grows under a programmatic scroll must not count as the reader leaving the bottom.
      el.addEventListener('scroll', () => {
        const top = el.scrollTop;
        if (el.scrollHeight - top - el.clientHeight < 60) this.stick[lane] = true;
        else if (top < this.lastTop[lane] - 2) this.stick[lane] = false;
        this.lastTop[lane] = top;
      }, { passive: true });
    }
  }

  // session

  open(session) {
    if (this.sub) this.sub.close();
    this.session = session;
    this.reset(new Transcript());
    this.sub = this.net.subscribe({
      stream: `konsole/${session}`,
      path: api.sessionPath(session, '/events'),
      from: 0,
      fold: true,
      onEvent: (envelope) => this.onEvent(envelope),
      onReset: (info) => this.reload(info),
    });
    this.emitChange();
  }

  reset(fold) {
    this.fold = fold;
    this.views = new Map();
    this.turnEls = new Map();
    for (const lane of Object.values(this.lanes)) clear(lane);
    this.stick = { main: true, quick: true };
    this.lastTop = { main: 0, quick: 0 };
    this.lanes.main.append(this.emptyNote('main'));
    this.lanes.quick.append(this.emptyNote('quick'));
    for (const entry of fold.entries) this.added(entry);
    for (const turn of fold.turns.keys()) this.turnChanged(turn);
    this.updateEmpty();
    this.scrollSoon();
  }

  emptyNote(lane) {
    return h('div', { class: 'empty-note', 'data-empty': lane }, lane === 'main'
      ? 'No messages yet. Ask the agent something below.'
      : 'Quick questions run at once on a warm worker, beside a long main turn.');
  }

  updateEmpty() {
    for (const [lane, el] of Object.entries(this.lanes)) {
      const note = el.querySelector('[data-empty]');
      if (note) note.hidden = el.querySelector('.turn') !== null;
    }
  }

  // A stream.reset (or a lost epoch): what we held may have gaps; load the folded transcript and
  // apply what arrives meanwhile on top of it, by seq.
  async reload(info) {
    const session = this.session;
    this.buffer = this.buffer || [];
    const snapshot = await retry(() => api.get(api.sessionPath(session, '/messages')),
      { wanted: () => session === this.session });
    if (session !== this.session) return;
    const held = this.buffer;
    this.buffer = null;
    this.reset(Transcript.fromSnapshot(snapshot));
    for (const envelope of held) this.onEvent(envelope);
    this.metrics.resets = (this.metrics.resets || 0) + 1;
    this.metrics.lastReset = info && info.reason;
    this.emitChange();
  }

  // events

  onEvent(envelope) {
    if (this.buffer) {
      this.buffer.push(envelope);
      return;
    }
    const change = this.fold.apply(envelope);
    this.metrics.consoleSeq = this.fold.seq;
    if (!change) return;
    if (change.entry) {
      if (change.added) this.added(change.entry, true);
      else this.updated(change.entry, change.delta);
    }
    if (change.turnChanged) this.turnChanged(change.turnChanged);
    if (change.stateChanged || change.turnChanged) this.emitChange();
    this.measure(envelope);
    this.scrollSoon();
  }

  emitChange() {
    this.dispatchEvent(new CustomEvent('change'));
  }

  get running() {
    return this.fold.openTurns('main');
  }

  get agentState() {
    const state = this.fold.state || {};
    const label = STATE_LABELS[state.agent_state] || state.agent_state || 'idle';
    const tools = (state.outstanding_tool_calls || []).map((t) => t.name).filter(Boolean);
    if (state.agent_state === 'rate_limited' && typeof state.retry_in_ms === 'number') {
      return `${label}, retrying in ${(state.retry_in_ms / 1000).toFixed(1)} s`;
    }
    return tools.length && state.agent_state === 'running_tool' ? `running ${tools.join(', ')}` : label;
  }

  // What runs the session's turns, from its main lane's latest agent.info: "Claude Code 2.1.3 · model ·
  // cwd". The CLI agents' records carry their label; Claude Code's is named here.
  get agentLine() {
    const agent = this.fold.agent || {};
    if (!agent.name) return '';
    const name = [agent.label || AGENT_NAMES[agent.name] || agent.name, agent.version].filter(Boolean).join(' ');
    return [name, agent.model, agent.cwd].filter(Boolean).join(' · ');
  }

  // permission requests

  get pendingPermissions() {
    return this.fold.pendingPermissions();
  }

  // Answer one request from its card (or a shortcut); its card shows the outcome once the
  // `permission.decided` event arrives, whoever answered first.
  async answer(entry, decision, remember = false) {
    const view = this.views.get(entry);
    if (!view || view.busy || entry.status !== 'pending') return;
    view.busy = true;
    this.paint(entry, view);
    try {
      await this.decide(entry.request_id, decision, remember);
    } catch (error) {
      this.toast(error.status === 409 || error.code === 'permission_settled'
        ? `Already answered: ${error.message}` : `Not answered (${error.message})`, 'error');
    } finally {
      view.busy = false;
      if (this.views.get(entry) === view) this.paint(entry, view);
    }
  }

  // The oldest waiting request, answered as a keyboard shortcut says; false if none waits.
  answerFirst({ decision, remember }) {
    const entry = this.pendingPermissions.find((request) => !this.views.get(request)?.busy);
    if (!entry) return false;
    this.answer(entry, decision, remember);
    return true;
  }

  decide(requestId, decision, remember) {
    const body = remember ? { decision, remember: true } : { decision };
    const ws = this.net.ws;
    if (ws) return ws.send({ op: 'decide', session: this.session, request_id: requestId, ...body });
    return api.post(api.sessionPath(this.session, `/permissions/${encodeURIComponent(requestId)}`), body);
  }

  // rendering

  turnView(entry) {
    let view = this.turnEls.get(entry.turn);
    if (view) return view;
    const lane = entry.lane === 'quick' ? 'quick' : 'main';
    const body = h('div', { class: 'assistant' });
    const end = h('footer', { class: 'turn-end' });
    const article = h('article', { class: `turn lane-${lane}`, 'data-turn': entry.turn }, body, end);
    this.lanes[lane].append(article);
    view = { article, body, end, lane };
    this.turnEls.set(entry.turn, view);
    this.updateEmpty();
    return view;
  }

  added(entry, live = false) {
    const turn = this.turnView(entry);
    let el;
    if (entry.kind === 'message') {
      el = h('div', { class: 'msg user' }, h('div', { class: 'who' }, 'You', h('span', { class: 'queued-badge' }, 'queued')),
        h('div', { class: 'body' }, entry.text));
      turn.article.insertBefore(el, turn.body);
      turn.user = el;
    } else if (entry.kind === 'text') {
      el = h('div', { class: 'text md' });
      turn.body.append(el);
    } else if (entry.kind === 'thinking') {
      el = h('details', { class: 'thinking' },
        h('summary', {}, h('span', { class: 'thinking-label' }, ''), h('span', { class: 'thinking-preview' }, '')),
        h('div', { class: 'thinking-body' }));
      turn.body.append(el);
    } else if (entry.kind === 'tool') {
      el = h('details', { class: 'tool' });
      this.toolParent(entry, turn).append(el);
    } else if (entry.kind === 'permission') {
      el = h('section', { class: 'permission' });
      turn.body.append(el);
    } else if (entry.kind === 'todos') {
      el = h('div', { class: 'todos', role: 'group', 'aria-label': 'Progress' });
      turn.body.append(el);
    } else if (entry.kind.startsWith('turn.')) {
      el = turn.end;
    } else {
      return;
    }
    const view = { el };
    this.views.set(entry, view);
    this.paint(entry, view, live ? undefined : null);
    if (entry.kind === 'permission' && entry.status === 'pending' && this.canFocus()) {
      el.querySelector('button[data-decision="allow"]')?.focus({ preventScroll: true });
    }
  }

  // A subagent's call goes under the call that started the subagent (its Task/Agent card), in a box
  // after that card, so that repainting the card keeps it.
  toolParent(entry, turn) {
    const parent = entry.parent_call_id && this.fold.tools.get(String(entry.parent_call_id));
    const view = parent && this.views.get(parent);
    if (!view) return turn.body;
    if (!view.children) {
      view.children = h('div', { class: 'tool-children', 'data-parent': entry.parent_call_id });
      view.el.after(view.children);
    }
    return view.children;
  }

  updated(entry, delta) {
    const view = this.views.get(entry);
    if (view) this.paint(entry, view, delta);
  }

  // `delta`: text appended since the last paint (streaming), undefined: repaint from the entry.
  paint(entry, view, delta) {
    const { el } = view;
    switch (entry.kind) {
      case 'text':
        if (entry.done) {
          if (!view.rendered) {
            clear(el).append(renderMarkdown(entry.text));
            el.classList.remove('streaming');
            view.rendered = true;
            view.node = null;
          }
        } else if (view.node && typeof delta === 'string') {
          view.node.appendData(delta);
        } else {
          view.node = document.createTextNode(entry.text);
          clear(el).append(view.node);
          el.classList.add('streaming');
        }
        break;
      case 'thinking': {
        const body = el.querySelector('.thinking-body');
        if (view.node && typeof delta === 'string' && !entry.done) view.node.appendData(delta);
        else if (!view.node || view.node.data !== entry.text) {
          view.node = document.createTextNode(entry.text);
          clear(body).append(view.node);
        }
        el.querySelector('.thinking-label').textContent = entry.done ? 'Thought' : 'Thinking…';
        el.querySelector('.thinking-preview').textContent = entry.done ? preview(entry.text) : '';
        el.classList.toggle('live', !entry.done);
        break;
      }
      case 'tool':
        paintTool(el, entry);
        break;
      case 'todos':
        paintTodos(el, entry.todos || []);
        break;
      case 'permission':
        paintPermission(el, entry, {
          busy: Boolean(view.busy), answer: (decision, remember) => this.answer(entry, decision, remember),
        });
        break;
      default:
        if (entry.kind.startsWith('turn.')) paintEnd(el, entry);
    }
  }

  turnChanged(turnId) {
    const summary = this.fold.turns.get(turnId);
    const view = this.turnEls.get(turnId);
    if (!summary || !view) return;
    view.article.dataset.status = summary.status;
  }

  scrollSoon() {
    if (this.scrollQueued) return;
    this.scrollQueued = true;
    requestAnimationFrame(() => {
      this.scrollQueued = false;
      for (const [lane, el] of Object.entries(this.lanes)) {
        if (this.stick[lane]) el.scrollTop = el.scrollHeight;
      }
      this.metrics.paintedSeq = this.fold.seq;
      this.metrics.paintedAt = performance.now();
    });
  }

  // Enter → first token on screen: marked when the turn we sent shows its first delta.
  expect(message, lane) {
    this.metrics.pending = { message, lane, sentAt: performance.now(), turn: null };
  }

  measure(envelope) {
    const pending = this.metrics.pending;
    if (!pending) return;
    if (!pending.turn && (envelope.type === 'turn.started' || envelope.type === 'turn.queued')
        && envelope.data && envelope.data.message === pending.message) {
      pending.turn = envelope.turn;
      return;
    }
    if (envelope.turn !== pending.turn) return;
    // After the next frame has been produced, the token is on screen.
    const painted = (name) => requestAnimationFrame(() => setTimeout(() => {
      pending[name] = performance.now() - pending.sentAt;
    }, 0));
    if ((envelope.type === 'thinking.delta' || envelope.type === 'text.delta') && !pending.eventSeen) {
      pending.eventSeen = true;
      painted('firstEventMs');
    }
    if (envelope.type === 'text.delta' && !pending.textSeen) {
      pending.textSeen = true;
      painted('firstTextMs');
    }
  }
}

function preview(text) {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > 90 ? `${line.slice(0, 89)}…` : line;
}

function brief(input) {
  if (!input || typeof input !== 'object') return '';
  if (Array.isArray(input.todos)) return `${input.todos.length} items`;
  const first = Object.values(input).find((v) => typeof v === 'string' || typeof v === 'number');
  const text = first === undefined ? JSON.stringify(input) : String(first);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

function pretty(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'string') {
    try {
      const parsed = JSON.parse(value);
      if (parsed && typeof parsed === 'object') return JSON.stringify(parsed, null, 2);
    } catch {
      // plain text
    }
    return value;
  }
  return JSON.stringify(value, null, 2);
}

function paintTool(el, entry) {
  const state = !entry.done ? 'running' : entry.is_error ? 'error' : 'ok';
  el.className = `tool tool-${state}`;
  const icon = { running: '', ok: '✓', error: '✗' }[state];
  const duration = entry.done && typeof entry.duration_ms === 'number'
    ? `${entry.duration_ms < 1000 ? Math.round(entry.duration_ms) + ' ms' : (entry.duration_ms / 1000).toFixed(1) + ' s'}`
    : entry.done ? '' : 'running…';
  const wasOpen = el.open;
  clear(el).append(
    h('summary', {},
      h('span', { class: `tool-icon ${state}`, 'aria-label': state }, icon),
      h('span', { class: 'tool-name' }, entry.name || 'tool'),
      h('span', { class: 'tool-brief' }, brief(entry.input)),
      h('span', { class: 'tool-time' }, duration)),
    h('div', { class: 'tool-body' },
      h('div', { class: 'label' }, 'Input'),
      h('pre', { class: 'code' }, pretty(entry.input)),
      entry.done ? [h('div', { class: 'label' }, entry.is_error ? 'Error' : 'Result'),
        h('pre', { class: `code${entry.is_error ? ' error' : ''}` }, pretty(entry.output))] : null),
  );
  el.open = wasOpen;
}

function paintTodos(el, todos) {
  const done = todos.filter((t) => t.status === 'completed').length;
  const active = todos.find((t) => t.status === 'in_progress');
  const share = todos.length ? Math.round((100 * done) / todos.length) : 0;
  clear(el).append(
    h('div', { class: 'todos-head' },
      h('span', { class: 'todos-title' }, 'Progress'),
      h('span', { class: 'todos-count' }, `${done}/${todos.length}`),
      active ? h('span', { class: 'todos-active' }, active.activeForm || active.content) : null),
    h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': todos.length, 'aria-valuenow': done },
      h('span', { style: `width:${share}%` })),
    h('ul', {}, todos.map((todo) => h('li', { class: `todo ${todo.status}` },
      h('span', { class: 'todo-icon', 'aria-hidden': 'true' }, todo.status === 'completed' ? '✓' : todo.status === 'in_progress' ? '◐' : '○'),
      h('span', { class: 'todo-text' }, todo.status === 'in_progress' ? (todo.activeForm || todo.content) : todo.content)))),
  );
}

function paintEnd(el, entry) {
  const kind = entry.kind.split('.')[1];
  el.className = `turn-end end-${kind}`;
  const extra = [];
  const usage = entry.usage || {};
  if (usage.output_tokens) extra.push(h('span', { class: 't-tokens' }, `${usage.input_tokens || 0} in / ${usage.output_tokens} out tokens`));
  const status = kind === 'completed' ? null
    : h('div', { class: 'end-status' }, kind === 'failed' ? `✗ Failed: ${entry.error || 'error'}` : `⊘ Cancelled: ${entry.reason || 'cancelled'}`);
  const denied = (entry.permission_denials || []).map((d) => h('li', {},
    h('span', { class: 'tool-name' }, d.tool || 'tool'), ' ', h('span', { class: 'tool-brief' }, brief(d.input))));
  const denials = denied.length
    ? h('div', { class: 'end-denials' }, h('div', { class: 'label' }, 'Not permitted'), h('ul', {}, denied)) : null;
  clear(el).append(status || '', denials || '', entry.timing ? timingView(entry.timing, extra) : '');
}
