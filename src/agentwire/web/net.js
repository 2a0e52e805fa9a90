// The connection manager: every stream the page follows goes through one `Net`, which owns the
// transport (SSE over fetch, or one WebSocket), the reconnect policy, the heartbeat watchdog, the
// resume position and the seq dedup of each subscription, and the status the indicator shows.
//
// A transport is one logical connection carrying all subscriptions. It reports `opened(sub, info)`
// per subscription, `message(sub, envelope)` per event, and `lost(reason)` once; the manager then
// drops it and builds a new one after a backoff, resuming every subscription at its last seq.

import { Backoff } from './retry.js';
import { SseParser } from './sse.js';

export const DEFAULT_HEARTBEAT_MS = 15000;
const WATCHDOG_FACTOR = 2.5;
const HIDDEN_RECONNECT_MS = 5000;

export class HttpError extends Error {
  constructor(status, body) {
    let message = `HTTP ${status}`;
    try {
      const parsed = JSON.parse(body);
      if (parsed && parsed.error && parsed.error.message) message = parsed.error.message;
    } catch {
      if (body) message = body.slice(0, 200);
    }
    super(message);
    this.status = status;
  }
}

// One stream the page follows. `path` is the SSE URL (without position); `from` the first seq
// wanted before any event was seen (null: the server's default); `lastSeq` the resume position;
// `fold`: replayed text/thinking blocks that are complete come as their one `*.done` event.
export class Subscription {
  constructor(net, { stream, path, from = null, fold = false, onEvent, onReset = () => {}, onOpen = () => {} }) {
    this.net = net;
    this.stream = stream;
    this.path = path;
    this.fold = fold;
    this.from = from;
    this.lastSeq = null;
    this.epoch = null;
    this.onEvent = onEvent;
    this.onReset = onReset;
    this.onOpen = onOpen;
    this.duplicates = 0;
    this.closed = false;
  }

  close() {
    this.net.unsubscribe(this);
  }
}

// SSE transport: one fetch per subscription, parsed from the ReadableStream, so the page controls
// Last-Event-ID, sees `: ping` comments, and can abort a silent connection.
class SseTransport {
  static kind = 'sse';

  constructor(net) {
    this.net = net;
    this.streams = new Map();
    this.closed = false;
  }

  open(subs) {
    for (const sub of subs) this.add(sub);
  }

  add(sub) {
    const state = { ctrl: new AbortController(), opened: false, lastByteAt: performance.now() };
    this.streams.set(sub, state);
    this.run(sub, state).catch((error) => {
      if (!state.ctrl.signal.aborted && !this.closed) this.net.lost(this, error);
    });
  }

  remove(sub) {
    const state = this.streams.get(sub);
    if (state) state.ctrl.abort();
    this.streams.delete(sub);
    this.net.checkOpen(this);
  }

  isOpen(sub) {
    const state = this.streams.get(sub);
    return Boolean(state && state.opened);
  }

  silentFor(now) {
    let worst = 0;
    for (const state of this.streams.values()) worst = Math.max(worst, now - state.lastByteAt);
    return worst;
  }

  close() {
    this.closed = true;
    for (const state of this.streams.values()) state.ctrl.abort();
    this.streams.clear();
  }

  async run(sub, state) {
    const url = new URL(sub.path, location.href);
    if (sub.fold) url.searchParams.set('fold', '1');
    const headers = { accept: 'text/event-stream' };
    if (sub.lastSeq !== null) headers['last-event-id'] = String(sub.lastSeq);
    else if (sub.from !== null) url.searchParams.set('from', String(sub.from));
    const response = await fetch(url, {
      headers, signal: state.ctrl.signal, cache: 'no-store', credentials: 'same-origin',
    });
    if (!response.ok) throw new HttpError(response.status, await response.text());
    state.lastByteAt = performance.now();
    const parser = new SseParser(
      (message) => this.message(sub, state, message),
      (comment) => this.net.pinged(state.previousByteAt, comment),
    );
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      state.previousByteAt = state.lastByteAt;
      state.lastByteAt = performance.now();
      parser.push(value);
    }
    throw new Error('stream ended');
  }

  message(sub, state, message) {
    if (this.closed || !this.streams.has(sub)) return;
    let envelope;
    try {
      envelope = JSON.parse(message.data);
    } catch {
      return;
    }
    if (message.event === 'stream.open') {
      state.opened = true;
      this.net.opened(this, sub, envelope.data || {});
    } else if (message.event === 'stream.reset') {
      this.net.reset(sub, envelope.data || {});
    } else {
      this.net.deliver(sub, envelope);
    }
  }
}

// WebSocket transport (§6): one socket, subscribe/unsubscribe per stream, commands with refs.
class WsTransport {
  static kind = 'ws';

  constructor(net) {
    this.net = net;
    this.subs = new Map(); // stream name → { sub, opened }
    this.pending = new Map(); // ref → { resolve, reject, sub? }
    this.refs = 0;
    this.closed = false;
    this.lastByteAt = performance.now();
    this.previousByteAt = this.lastByteAt;
  }

  open(subs) {
    const url = new URL('/api/ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    this.socket = new WebSocket(url);
    this.socket.onopen = () => {
      this.lastByteAt = performance.now();
      for (const { sub } of this.subs.values()) this.subscribe(sub);
      this.pinger = setInterval(() => this.ping(), Math.max(1000, this.net.heartbeatMs));
    };
    this.socket.onmessage = (event) => this.receive(event.data);
    this.socket.onclose = (event) => {
      if (!this.closed) this.net.lost(this, new Error(`websocket closed (${event.code}${event.reason ? ': ' + event.reason : ''})`));
    };
    for (const sub of subs) this.subs.set(sub.stream, { sub, opened: false });
  }

  add(sub) {
    this.subs.set(sub.stream, { sub, opened: false });
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.subscribe(sub);
  }

  remove(sub) {
    const entry = this.subs.get(sub.stream);
    if (!entry || entry.sub !== sub) return;
    this.subs.delete(sub.stream);
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.send({ op: 'unsubscribe', stream: sub.stream }).catch(() => {});
    }
    this.net.checkOpen(this);
  }

  isOpen(sub) {
    const entry = this.subs.get(sub.stream);
    return Boolean(entry && entry.sub === sub && entry.opened);
  }

  silentFor(now) {
    return now - this.lastByteAt;
  }

  get ready() {
    return Boolean(this.socket && this.socket.readyState === WebSocket.OPEN);
  }

  subscribe(sub) {
    const frame = { op: 'subscribe', stream: sub.stream };
    if (sub.fold) frame.fold = true;
    if (sub.lastSeq !== null) frame.after = sub.lastSeq;
    else if (sub.from !== null) frame.from = sub.from;
    this.send(frame).catch((error) => {
      if (!this.closed) this.net.lost(this, error);
    });
  }

  ping() {
    if (this.ready) this.send({ op: 'ping' }).catch(() => {});
  }

  send(frame) {
    if (!this.ready) return Promise.reject(new Error('websocket is not open'));
    const ref = `r${++this.refs}`;
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      this.socket.send(JSON.stringify({ ...frame, ref }));
    });
  }

  receive(text) {
    this.previousByteAt = this.lastByteAt;
    this.lastByteAt = performance.now();
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.op) {
      const waiter = message.ref ? this.pending.get(message.ref) : null;
      if (message.op === 'ack' && waiter) {
        this.pending.delete(message.ref);
        waiter.resolve(message);
      } else if (message.op === 'error' && waiter) {
        this.pending.delete(message.ref);
        const error = message.error || {};
        const failure = new Error(error.message || error.code || 'request failed');
        failure.code = error.code;
        waiter.reject(failure);
      } else if (message.op === 'ping' || message.op === 'pong') {
        this.net.pinged(this.previousByteAt, 'ping');
      }
      return;
    }
    const entry = this.subs.get(message.stream);
    if (!entry) return;
    if (message.type === 'stream.open') {
      entry.opened = true;
      this.net.opened(this, entry.sub, message.data || {});
    } else if (message.type === 'stream.reset') {
      this.net.reset(entry.sub, message.data || {});
    } else if (message.type === 'ping') {
      this.net.pinged(this.previousByteAt, 'ping');
    } else if (typeof message.seq === 'number') {
      this.net.deliver(entry.sub, message);
    }
  }

  close() {
    this.closed = true;
    clearInterval(this.pinger);
    for (const waiter of this.pending.values()) waiter.reject(new Error('websocket closed'));
    this.pending.clear();
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.onmessage = null;
      try {
        this.socket.close();
      } catch {
        // already closed
      }
    }
  }
}

export const TRANSPORTS = { sse: SseTransport, ws: WsTransport };

// The transport the page uses: `?transport=` wins, then the saved setting, then SSE.
export function chosenTransport(search = location.search, storage = localStorage) {
  const fromUrl = new URLSearchParams(search).get('transport');
  if (fromUrl && TRANSPORTS[fromUrl]) return fromUrl;
  const saved = storage.getItem('agentwire.transport');
  return saved && TRANSPORTS[saved] ? saved : 'sse';
}

export class Net extends EventTarget {
  constructor({ transport = 'sse', heartbeatMs = DEFAULT_HEARTBEAT_MS, backoff = new Backoff() } = {}) {
    super();
    this.kind = TRANSPORTS[transport] ? transport : 'sse';
    this.heartbeatMs = heartbeatMs;
    this.heartbeatKnown = false;
    this.backoff = backoff;
    this.subs = new Set();
    this.transport = null;
    this.timer = null;
    this.status = { state: 'connecting', attempt: 0, nextInMs: 0, error: '' };
    this.stats = { opens: 0, losses: 0, duplicates: 0, delivered: 0, lastLoss: '' };
    this.hiddenAt = null;
    this.started = false;
  }

  start() {
    if (this.started) return;
    this.started = true;
    addEventListener('online', () => this.retryNow('online'));
    addEventListener('offline', () => this.goOffline());
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) {
        this.hiddenAt = performance.now();
      } else if (this.hiddenAt !== null) {
        const hidden = performance.now() - this.hiddenAt;
        this.hiddenAt = null;
        // A phone that slept may hold a dead socket that still looks open: start over from lastSeq.
        if (hidden > HIDDEN_RECONNECT_MS) this.retryNow('visible', { force: true });
      }
    });
    this.watchdog = setInterval(() => this.checkSilence(), 500);
    if (navigator.onLine === false) this.goOffline();
    else this.connect();
  }

  subscribe(spec) {
    const sub = new Subscription(this, spec);
    this.subs.add(sub);
    if (this.transport) this.transport.add(sub);
    this.setStatusFromTransport();
    return sub;
  }

  unsubscribe(sub) {
    if (sub.closed) return;
    sub.closed = true;
    this.subs.delete(sub);
    if (this.transport) this.transport.remove(sub);
  }

  setTransport(kind) {
    if (!TRANSPORTS[kind] || kind === this.kind) return;
    this.kind = kind;
    this.dispatchEvent(new CustomEvent('transport', { detail: kind }));
    if (this.started && this.status.state !== 'offline') {
      this.drop('transport changed');
      this.connect();
    }
  }

  get ws() {
    return this.transport instanceof WsTransport && this.transport.ready ? this.transport : null;
  }

  // transport callbacks

  opened(transport, sub, info) {
    if (transport !== this.transport) return;
    if (info.heartbeat_ms) {
      this.heartbeatMs = Number(info.heartbeat_ms);
      this.heartbeatKnown = true;
    }
    if (sub.epoch !== null && info.epoch && info.epoch !== sub.epoch) {
      // The journal lost the stream (memory restart, wipe): positions mean nothing any more.
      sub.epoch = info.epoch;
      sub.onReset({ epoch: info.epoch, head: info.head, reason: 'epoch_changed' });
    }
    if (info.epoch) sub.epoch = info.epoch;
    sub.onOpen(info);
    this.checkOpen(transport);
  }

  checkOpen(transport) {
    if (transport !== this.transport) return;
    for (const sub of this.subs) if (!transport.isOpen(sub)) return;
    if (this.status.state !== 'connected') {
      this.backoff.reset();
      this.stats.opens += 1;
      this.setStatus({ state: 'connected', attempt: 0, nextInMs: 0, error: '' });
    }
  }

  deliver(sub, envelope) {
    if (sub.closed) return;
    if (sub.lastSeq !== null && envelope.seq <= sub.lastSeq) {
      sub.duplicates += 1;
      this.stats.duplicates += 1;
      return;
    }
    sub.lastSeq = envelope.seq;
    this.stats.delivered += 1;
    sub.onEvent(envelope);
  }

  reset(sub, info) {
    if (sub.closed) return;
    // The stream goes on after the head: every event the position asked for is lost to us.
    sub.lastSeq = typeof info.head === 'number' ? info.head : sub.lastSeq;
    if (info.epoch) sub.epoch = info.epoch;
    sub.onReset(info);
  }

  pinged(previousByteAt, comment) {
    if (this.heartbeatKnown || previousByteAt === undefined) return;
    // The server pings after `heartbeat` seconds with nothing to send: the silence before a ping
    // is the server's heartbeat, seen from here.
    const idle = performance.now() - previousByteAt;
    if (idle > 200 && idle < 120000) this.heartbeatMs = idle;
    void comment;
  }

  lost(transport, error) {
    if (transport !== this.transport) return;
    this.stats.losses += 1;
    this.stats.lastLoss = String(error && error.message ? error.message : error);
    this.drop(this.stats.lastLoss);
    if (error instanceof HttpError && error.status === 401) {
      this.dispatchEvent(new CustomEvent('unauthorized'));
    }
    this.schedule(this.stats.lastLoss);
  }

  // lifecycle

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.transport) this.drop('reconnect');
    const Transport = TRANSPORTS[this.kind];
    this.transport = new Transport(this);
    this.transport.openedAt = performance.now();
    this.transport.open([...this.subs]);
    this.setStatusFromTransport();
  }

  drop(reason) {
    if (!this.transport) return;
    const transport = this.transport;
    this.transport = null;
    transport.close(reason);
  }

  schedule(error) {
    clearTimeout(this.timer);
    if (navigator.onLine === false) {
      this.goOffline();
      return;
    }
    const delay = this.backoff.next();
    this.setStatus({ state: 'reconnecting', attempt: this.backoff.attempt, nextInMs: delay, error: error || '' });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  retryNow(why, { force = false } = {}) {
    if (!this.started) return;
    if (this.status.state === 'connected' && !force) return;
    if (this.status.state === 'offline' || this.status.state === 'connected') {
      this.setStatus({ state: 'reconnecting', attempt: Math.max(1, this.backoff.attempt), nextInMs: 0, error: why });
    }
    this.connect();
  }

  goOffline() {
    clearTimeout(this.timer);
    this.timer = null;
    this.drop('offline');
    this.setStatus({ state: 'offline', attempt: 0, nextInMs: 0, error: '' });
  }

  checkSilence() {
    const now = performance.now();
    const late = this.lastCheckAt !== undefined && now - this.lastCheckAt > 1500;
    this.lastCheckAt = now;
    const transport = this.transport;
    // A check that comes late means the page was frozen or throttled, not the network: the reads
    // that arrived meanwhile have not run yet, so judge on the next tick.
    if (!transport || late) return;
    const limit = WATCHDOG_FACTOR * this.heartbeatMs;
    if (transport.silentFor(now) > limit) {
      this.lost(transport, new Error(`no heartbeat for ${(limit / 1000).toFixed(1)} s`));
    }
  }

  setStatusFromTransport() {
    if (this.transport) this.checkOpen(this.transport);
  }

  setStatus(status) {
    this.status = status;
    this.dispatchEvent(new CustomEvent('status', { detail: status }));
  }
}

export function describeStatus(status) {
  if (status.state === 'reconnecting') {
    const next = status.nextInMs > 0 ? `${(status.nextInMs / 1000).toFixed(1)}s` : 'now';
    return `reconnecting (attempt ${status.attempt}, next in ${next})`;
  }
  return status.state;
}
