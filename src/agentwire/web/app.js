// Wiring: the connection manager, the sessions list, the console, the board, the status indicator.

import { fillAgentChoices, showApproval, takesApproval } from './agents.js';
import * as api from './api.js';
import { BoardView } from './board.js';
import { ConsoleView } from './console.js';
import { $, clear, h } from './dom.js';
import { chosenTransport, describeStatus, Net } from './net.js';
import { SHORTCUTS } from './permission.js';
import { retry } from './retry.js';

const metrics = {};
const net = new Net({ transport: chosenTransport() });
const els = {
  status: $('#net-status'), statusText: $('#net-text'), transport: $('#transport'),
  tabs: { console: $('#tab-console'), board: $('#tab-board') }, boardCount: $('#board-count'),
  views: { console: $('#view-console'), board: $('#view-board') },
  sessions: $('#session-list'), newSessionButton: $('#new-session-btn'), newSession: $('#new-session'),
  sessionsToggle: $('#sessions-toggle'), sessionName: $('#session-name'), sessionModel: $('#session-model'),
  sessionAgent: $('#session-agent'), sessionApproval: $('#session-approval'),
  agentState: $('#agent-state'), composer: $('#composer'), input: $('#input'), send: $('#send'),
  cancel: $('#cancel'), quickForm: $('#quick-form'), quickInput: $('#quick-input'), quickSend: $('#quick-send'),
  toasts: $('#toasts'),
};

function toast(message, kind = 'info') {
  const el = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  els.toasts.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 7000 : 3500);
}

// A text field with something typed in it keeps the focus; otherwise a new permission card takes it,
// so its shortcuts (y, n, a) and Enter answer it at once. A message on its way counts as sent.
function typing() {
  const active = document.activeElement;
  return Boolean(active && active.matches('input, textarea, select') && active.value && !active.dataset.sending);
}

const consoleView = new ConsoleView({
  net, metrics, onToast: toast, lanes: { main: $('#lane-main'), quick: $('#lane-quick') },
  canFocus: () => !typing() && document.body.dataset.view === 'console',
});
const board = new BoardView({
  net, metrics, onToast: toast,
  root: { list: $('#task-list'), statusFilter: $('#status-filter'), tagFilter: $('#tag-filter'), search: $('#task-search') },
});

// status indicator

function showStatus(status) {
  els.status.dataset.state = status.state;
  els.statusText.textContent = describeStatus(status);
  els.status.title = status.error ? `last error: ${status.error}` : '';
  const offline = status.state === 'offline';
  for (const el of [els.input, els.send, els.quickInput, els.quickSend]) el.disabled = offline;
  els.input.placeholder = offline ? 'Offline — your text stays here until the network is back'
    : 'Message the agent — Enter to send, Shift+Enter for a new line';
  if (status.state === 'connected') refreshSessions();
}
net.addEventListener('status', (event) => showStatus(event.detail));
net.addEventListener('unauthorized', () => toast('Not signed in: open the link that `agentwire serve` printed.', 'error'));
showStatus(net.status);

els.transport.value = net.kind;
els.transport.addEventListener('change', () => {
  localStorage.setItem('agentwire.transport', els.transport.value);
  net.setTransport(els.transport.value);
});
net.addEventListener('transport', (event) => { els.transport.value = event.detail; });

// views

function showView(name) {
  for (const [key, el] of Object.entries(els.views)) el.hidden = key !== name;
  for (const [key, tab] of Object.entries(els.tabs)) tab.setAttribute('aria-selected', String(key === name));
  document.body.dataset.view = name;
  board.setVisible(name === 'board');
  if (name === 'console') els.input.focus({ preventScroll: true });
}
els.tabs.console.addEventListener('click', () => { location.hash = `#/s/${encodeURIComponent(consoleView.session || '')}`; });
els.tabs.board.addEventListener('click', () => { location.hash = '#/board'; });

board.addEventListener('change', () => {
  els.boardCount.textContent = board.unseen ? String(board.unseen) : '';
  els.boardCount.hidden = !board.unseen;
});
board.addEventListener('chosen', (event) => {
  const { task } = event.detail;
  toast(`Sent to ${task.session}: “${task.context && task.context.chosen ? task.context.chosen : 'your choice'}”`);
  if (task.session) location.hash = `#/s/${encodeURIComponent(task.session)}`;
});

// sessions

let sessions = [];
let refreshing = null;

async function refreshSessions() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const body = await api.get('/api/konsole');
      sessions = body.sessions || [];
      renderSessions();
    } catch {
      // the indicator tells; the list stays as it was
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// Permission requests waiting in a session: the open one's from its live fold, the others' from the list.
function waitingIn(session) {
  if (session.name === consoleView.session) return consoleView.pendingPermissions.length;
  return Number(session.pending_permissions || 0);
}

function renderSessions() {
  clear(els.sessions).append(...sessions.map((s) => {
    const current = s.name === consoleView.session;
    const state = current ? (consoleView.fold.state.agent_state || 'idle') : (s.agent_state || 'idle');
    const waiting = waitingIn(s);
    return h('li', {},
      h('a', {
        href: `#/s/${encodeURIComponent(s.name)}`, class: `session${current ? ' current' : ''}`,
        'aria-current': current ? 'true' : null, 'data-session': s.name,
      },
      h('span', { class: `state-dot state-${state}`, title: state }),
      h('span', { class: 'session-name' }, s.name),
      waiting ? h('span', {
        class: 'permission-badge', title: `${waiting} permission ${waiting === 1 ? 'request waits' : 'requests wait'}`,
      }, `⚠ ${waiting}`) : null,
      h('span', { class: 'session-model' }, [s.provider, s.model].filter(Boolean).join(' · ')),
      h('span', { class: 'session-state' }, state === 'idle' ? '' : state.replace(/_/g, ' '))));
  }));
  updateTitle();
}

// The tab's title says when an agent waits for an answer, so a person in another tab notices.
function updateTitle() {
  const name = consoleView.session || '';
  const state = consoleView.fold.state.agent_state || 'idle';
  const listed = sessions.some((s) => s.name === name);
  const waiting = sessions.reduce((sum, s) => sum + waitingIn(s), listed ? 0 : consoleView.pendingPermissions.length);
  const mark = waiting ? `⚠ ${waiting} waiting · ` : state === 'idle' ? '' : '● ';
  document.title = `${mark}${name} — agentwire`;
}

function sessionInfo(name) {
  return sessions.find((s) => s.name === name);
}

function openSession(name) {
  if (consoleView.session === name) return;
  saveDraft();
  consoleView.open(name);
  els.input.value = sessionStorage.getItem(`agentwire.draft.${name}`) || '';
  autosize();
  localStorage.setItem('agentwire.session', name);
  document.body.classList.remove('drawer-open');
  updateHeader();
  renderSessions();
}

function updateHeader() {
  const name = consoleView.session || '';
  const info = sessionInfo(name) || {};
  const running = consoleView.fold.turns && [...consoleView.fold.turns.values()].find((t) => t.status === 'running' && t.provider);
  els.sessionName.textContent = name;
  els.sessionModel.textContent = [info.provider || (running && running.provider), info.model || (running && running.model)]
    .filter(Boolean).join(' · ');
  els.sessionAgent.textContent = consoleView.agentLine;
  els.sessionAgent.title = consoleView.fold.agent.resume_id ? `session ${consoleView.fold.agent.resume_id}` : '';
  showApproval(els.sessionApproval, consoleView.fold.agent);
  const state = consoleView.fold.state.agent_state || 'idle';
  els.agentState.textContent = consoleView.agentState;
  els.agentState.dataset.state = state;
  const open = consoleView.running;
  els.cancel.hidden = !open.some((t) => t.status === 'running');
  updateTitle();
}

let lastState = null;
let lastWaiting = 0;
consoleView.addEventListener('change', () => {
  updateHeader();
  const state = consoleView.fold.state.agent_state;
  const waiting = consoleView.pendingPermissions.length;
  if (state !== lastState || waiting !== lastWaiting) {
    lastState = state;
    lastWaiting = waiting;
    renderSessions();
  }
});

// y / n / a answer the oldest waiting permission request, unless a text field has the focus.
document.addEventListener('keydown', (event) => {
  const shortcut = SHORTCUTS[event.key];
  if (!shortcut || event.ctrlKey || event.metaKey || event.altKey || event.isComposing || event.repeat) return;
  if (document.body.dataset.view !== 'console') return;
  if (event.target instanceof Element && event.target.closest('input, textarea, select, [contenteditable]')) return;
  if (consoleView.answerFirst(shortcut)) event.preventDefault();
});

let agentListing = null;

function showApprovalChoice() {
  const form = els.newSession.elements;
  form.approval.hidden = !agentListing || !takesApproval(agentListing, form.provider.value);
}

els.newSessionButton.addEventListener('click', async () => {
  els.newSession.hidden = !els.newSession.hidden;
  if (els.newSession.hidden) return;
  els.newSession.elements.name.focus();
  try {
    agentListing = await fillAgentChoices(els.newSession.elements.provider);
  } catch (error) {
    toast(`Could not list the agents: ${error.message}`, 'error');
  }
  showApprovalChoice();
});
els.newSession.elements.provider.addEventListener('change', showApprovalChoice);
els.newSession.addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = els.newSession.elements;
  const body = {};
  if (form.name.value.trim()) body.name = form.name.value.trim();
  if (form.provider.value.trim()) body.provider = form.provider.value.trim();
  if (form.model.value.trim()) body.model = form.model.value.trim();
  if (form.options.value.trim()) {
    try {
      body.options = JSON.parse(form.options.value);
    } catch {
      toast('Options must be JSON, e.g. {"deltas": 200}', 'error');
      return;
    }
  }
  if (!form.approval.hidden && form.approval.value) body.options = { ...body.options, approval: form.approval.value };
  try {
    const created = await api.post('/api/konsole', body);
    els.newSession.reset();
    els.newSession.hidden = true;
    await refreshSessions();
    location.hash = `#/s/${encodeURIComponent(created.name)}`;
  } catch (error) {
    toast(`Could not create the session: ${error.message}`, 'error');
  }
});
els.sessionsToggle.addEventListener('click', () => document.body.classList.toggle('drawer-open'));

// sending

function saveDraft() {
  if (consoleView.session) sessionStorage.setItem(`agentwire.draft.${consoleView.session}`, els.input.value);
}

function autosize() {
  els.input.style.height = 'auto';
  els.input.style.height = `${Math.min(220, els.input.scrollHeight + 2)}px`;
}

async function sendTurn(text, lane) {
  const session = consoleView.session;
  const ws = net.ws;
  if (ws) {
    const ack = await ws.send({ op: 'send', session, message: text, lane });
    return { turn: ack.turn || (ack.data && ack.data.turn) };
  }
  return api.startTurn(session, text, lane);
}

async function submit(input, lane) {
  const text = input.value;
  if (!text.trim() || !consoleView.session || net.status.state === 'offline' || input.dataset.sending) return;
  consoleView.expect(text, lane);
  input.dataset.sending = '1';
  try {
    await sendTurn(text, lane);
    // Cleared only once the server has the message; a failed send keeps what was typed.
    if (input.value === text) input.value = '';
    if (lane === 'main') {
      saveDraft();
      autosize();
    }
  } catch (error) {
    toast(`Not sent (${error.message}); your text is kept.`, 'error');
  } finally {
    delete input.dataset.sending;
  }
}

els.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  submit(els.input, 'main');
});
els.input.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit(els.input, 'main');
  }
});
els.input.addEventListener('input', () => {
  autosize();
  saveDraft();
});
els.quickForm.addEventListener('submit', (event) => {
  event.preventDefault();
  submit(els.quickInput, 'quick');
});
els.cancel.addEventListener('click', async () => {
  els.cancel.disabled = true;
  try {
    const ws = net.ws;
    if (ws) await ws.send({ op: 'cancel', session: consoleView.session });
    else await api.post(api.sessionPath(consoleView.session, '/cancel'), {});
  } catch (error) {
    toast(`Could not cancel: ${error.message}`, 'error');
  } finally {
    els.cancel.disabled = false;
  }
});

// routing: #/s/<session> or #/board

function defaultSession() {
  const saved = localStorage.getItem('agentwire.session') || '';
  if (sessionInfo(saved)) return saved;
  return sessions.length ? sessions[sessions.length - 1].name : saved || 'dashboard';
}

async function ensureSession(name) {
  if (sessionInfo(name)) return;
  // Like /api/konsole/dashboard/stream in the original dashboards: a new name makes a session.
  try {
    await api.post('/api/konsole', { name });
  } catch (error) {
    if (error.status !== 409) toast(`Could not open session ${name}: ${error.message}`, 'error');
  }
  await refreshSessions();
}

async function route() {
  const hash = location.hash;
  if (hash === '#/board') {
    showView('board');
    if (!consoleView.session) {
      const name = defaultSession();
      await ensureSession(name);
      openSession(name);
    }
    return;
  }
  const match = /^#\/s\/(.+)$/.exec(hash);
  const name = match ? decodeURIComponent(match[1]) : defaultSession();
  if (!match) history.replaceState(null, '', `${location.pathname}${location.search}#/s/${encodeURIComponent(name)}`);
  await ensureSession(name);
  openSession(name);
  showView('console');
}
addEventListener('hashchange', route);

setInterval(() => {
  if (!document.hidden && net.status.state === 'connected') refreshSessions();
}, 10000);

window.__aw = { net, console: consoleView, board, metrics };

(async () => {
  // A server just started may list no session yet: look three times before making one.
  await retry(async () => {
    await refreshSessions();
    if (!sessions.length) throw new Error('no sessions yet');
  }, { tries: 3 }).catch(() => {});
  await route();
  board.start();
  net.start();
})();
