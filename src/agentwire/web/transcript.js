// The browser's fold of a session stream: the same entries as the server's
// `agentwire.console.transcript.Transcript` (one per message, not per delta), so a page that
// followed the stream live and a page that loaded `/messages` show the same thing.
//
// One addition: a `todos` entry per turn, placed where the turn first wrote its todo list and
// updated in place (the server keeps only the session's latest list).

export const TERMINAL = new Set(['turn.completed', 'turn.failed', 'turn.cancelled']);
const BLOCK_KINDS = {
  'text.delta': 'text', 'text.done': 'text', 'thinking.delta': 'thinking', 'thinking.done': 'thinking',
};
// The tools whose input is the turn's todo list: the built-in one, and Claude Code's.
const TODO_TOOLS = new Set(['todo_write', 'TodoWrite']);
const IDLE = { agent_state: 'idle', outstanding_llm_calls: 0, outstanding_tool_calls: [] };
const STATE_FIELDS = ['agent_state', 'outstanding_llm_calls', 'outstanding_tool_calls', 'retry_in_ms'];
const END_FIELDS = ['stop_reason', 'usage', 'timing', 'error', 'reason', 'permission_denials'];
const PERMISSION_FIELDS = ['request_id', 'tool', 'input', 'call_id', 'title', 'expires_at', 'rule'];

export class Transcript {
  constructor() {
    this.seq = 0;
    this.entries = [];
    this.todos = [];
    this.turns = new Map();
    this.usage = { input_tokens: 0, output_tokens: 0 };
    this.state = { ...IDLE };
    this.blocks = new Map();
    this.tools = new Map();
    this.todoEntries = new Map();
    this.agent = {}; // the main lane's agent record (`agent.info`): what runs this session's turns
    // Tool-permission requests by id (their entries: status pending, allowed, denied, or ended when
    // the turn ended unanswered), and the rules "always allow" made.
    this.permissions = new Map();
    this.rules = [];
  }

  // Apply one envelope; returns {entry, added, delta} for the view, or null if nothing to show.
  apply(envelope) {
    if (typeof envelope.seq === 'number') {
      if (envelope.seq <= this.seq) return null;
      this.seq = envelope.seq;
    }
    return this.applyEnvelope(envelope);
  }

  applyEnvelope(envelope) {
    const kind = envelope.type;
    const data = envelope.data || {};
    const turn = envelope.turn || '';
    const lane = envelope.lane || 'main';
    const seq = envelope.seq || 0;
    const base = { turn, lane, seq };
    if (kind === 'turn.queued' || kind === 'turn.started') {
      let summary = this.turns.get(turn);
      let change = null;
      if (!summary) {
        summary = {
          id: turn, lane, message: data.message || '', status: 'queued', provider: null, model: null,
          started_seq: seq, error: null, origin: data.origin ?? null,
        };
        this.turns.set(turn, summary);
        const entry = { ...base, role: 'user', kind: 'message', text: summary.message };
        this.entries.push(entry);
        change = { entry, added: true, turnChanged: turn };
      }
      if (kind === 'turn.started') {
        summary.status = 'running';
        summary.provider = data.provider ?? null;
        summary.model = data.model ?? null;
      }
      return change || { turnChanged: turn };
    }
    if (kind in BLOCK_KINDS) {
      const family = BLOCK_KINDS[kind];
      const key = `${turn}\u0000${family}\u0000${Number(data.block || 0)}`;
      let entry = this.blocks.get(key);
      let added = false;
      if (!entry) {
        entry = { ...base, role: 'assistant', kind: family, block: Number(data.block || 0), text: '', done: false };
        this.blocks.set(key, entry);
        this.entries.push(entry);
        added = true;
      }
      let delta;
      if (kind.endsWith('.delta')) {
        delta = data.text || '';
        entry.text += delta;
      } else {
        entry.text = data.text !== undefined ? data.text : entry.text;
        entry.done = true;
      }
      entry.seq = seq;
      return { entry, added, delta };
    }
    if (kind === 'tool.call') {
      const entry = {
        ...base, role: 'assistant', kind: 'tool', call_id: data.call_id ?? null, name: data.name ?? null,
        input: data.input ?? null, output: null, is_error: false, duration_ms: null, done: false,
      };
      if (data.parent_call_id) entry.parent_call_id = data.parent_call_id;
      this.tools.set(String(data.call_id), entry);
      this.entries.push(entry);
      return { entry, added: true };
    }
    if (kind === 'tool.result') {
      let entry = this.tools.get(String(data.call_id));
      let added = false;
      if (!entry) {
        entry = { ...base, role: 'assistant', kind: 'tool', call_id: data.call_id ?? null, name: null, input: null };
        this.entries.push(entry);
        added = true;
      }
      Object.assign(entry, {
        output: data.output ?? null, is_error: Boolean(data.is_error), duration_ms: data.duration_ms ?? null,
        done: true, seq,
      });
      return { entry, added };
    }
    if (kind === 'permission.requested') {
      const entry = { ...base, role: 'assistant', kind: 'permission', status: 'pending', ...pick(data, PERMISSION_FIELDS) };
      this.permissions.set(String(data.request_id), entry);
      this.entries.push(entry);
      return { entry, added: true, stateChanged: true };
    }
    if (kind === 'permission.decided') {
      const entry = this.permissions.get(String(data.request_id));
      if (data.rule) this.rules.push({ ...data.rule });
      if (!entry) return null;
      Object.assign(entry, {
        status: data.decision === 'allow' ? 'allowed' : 'denied', by: data.by ?? null, message: data.message ?? '', seq,
      });
      if (data.remember) entry.remember = true;
      return { entry, added: false, stateChanged: true };
    }
    if (kind === 'todo.updated') {
      this.todos = [...(data.todos || [])];
      let entry = this.todoEntries.get(turn);
      let added = false;
      if (!entry) {
        entry = { ...base, role: 'assistant', kind: 'todos', todos: [] };
        this.todoEntries.set(turn, entry);
        this.entries.push(entry);
        added = true;
      }
      entry.todos = this.todos;
      entry.seq = seq;
      return { entry, added };
    }
    if (kind === 'agent.info') {
      if (lane !== 'main') return null; // a quick turn's agent has a context of its own
      this.agent = { ...data };
      return { stateChanged: true };
    }
    if (kind === 'state') {
      this.state = { ...pick(data, STATE_FIELDS), turn, lane };
      return { stateChanged: true };
    }
    if (TERMINAL.has(kind)) {
      const summary = this.turns.get(turn);
      if (summary) {
        summary.status = kind.split('.')[1];
        summary.error = data.error || data.reason || null;
      }
      this.addUsage(data.usage);
      this.endPermissions(turn);
      const entry = { ...base, role: 'system', kind, ...pick(data, END_FIELDS) };
      this.entries.push(entry);
      if (![...this.turns.values()].some((t) => t.status === 'running' || t.status === 'queued')) {
        this.state = { ...IDLE };
      }
      return { entry, added: true, turnChanged: turn };
    }
    return null;
  }

  // Rebuild from `GET /api/konsole/{s}/messages` (a reset or a lost epoch): the server's entries,
  // plus each turn's todo card from its last todo tool's input.
  static fromSnapshot(snapshot) {
    const fold = new Transcript();
    fold.seq = snapshot.seq || 0;
    fold.todos = snapshot.todos || [];
    fold.agent = snapshot.agent || {};
    fold.rules = [...(snapshot.rules || [])];
    const lastTodos = new Map();
    for (const entry of snapshot.messages || []) {
      if (entry.kind === 'tool' && TODO_TOOLS.has(entry.name) && entry.input && Array.isArray(entry.input.todos)) {
        lastTodos.set(entry.turn, entry.input.todos);
      }
    }
    for (const entry of snapshot.messages || []) {
      const copy = { ...entry };
      fold.entries.push(copy);
      if (copy.kind === 'message') {
        // What the entries cannot tell (a queued turn, provider, model, origin) waits for the next events.
        fold.turns.set(copy.turn, {
          id: copy.turn, lane: copy.lane, message: copy.text, status: 'running', provider: null, model: null,
          started_seq: copy.seq, error: null, origin: null,
        });
      } else if (TERMINAL.has(copy.kind)) {
        const summary = fold.turns.get(copy.turn);
        if (summary) {
          summary.status = copy.kind.split('.')[1];
          summary.error = copy.error || copy.reason || null;
        }
        fold.addUsage(copy.usage);
        fold.endPermissions(copy.turn);
      } else if (copy.kind === 'permission') {
        fold.permissions.set(String(copy.request_id), copy);
      } else if (copy.kind === 'text' || copy.kind === 'thinking') {
        fold.blocks.set(`${copy.turn}\u0000${copy.kind}\u0000${Number(copy.block || 0)}`, copy);
      } else if (copy.kind === 'tool') {
        fold.tools.set(String(copy.call_id), copy);
        if (TODO_TOOLS.has(copy.name) && lastTodos.has(copy.turn) && !fold.todoEntries.has(copy.turn)) {
          const todos = { turn: copy.turn, lane: copy.lane, seq: copy.seq, role: 'assistant', kind: 'todos',
                          todos: lastTodos.get(copy.turn) };
          fold.todoEntries.set(copy.turn, todos);
          fold.entries.push(todos);
        }
      }
    }
    return fold;
  }

  // A turn that ended with a request unanswered (its node died): nobody can answer it now.
  endPermissions(turn) {
    for (const request of this.permissions.values()) {
      if (request.turn === turn && request.status === 'pending') request.status = 'ended';
    }
  }

  pendingPermissions() {
    return [...this.permissions.values()].filter((request) => request.status === 'pending');
  }

  addUsage(usage) {
    for (const name of ['input_tokens', 'output_tokens']) {
      this.usage[name] = (this.usage[name] || 0) + Number(usage?.[name] || 0);
    }
    if (usage?.cost_usd !== undefined && usage.cost_usd !== null) {
      this.usage.cost_usd = Math.round(((this.usage.cost_usd || 0) + Number(usage.cost_usd)) * 1e6) / 1e6;
    }
  }

  openTurns(lane) {
    return [...this.turns.values()].filter((t) => (t.status === 'running' || t.status === 'queued')
      && (!lane || t.lane === lane));
  }
}

function pick(source, names) {
  const out = {};
  for (const name of names) if (name in source) out[name] = source[name];
  return out;
}
