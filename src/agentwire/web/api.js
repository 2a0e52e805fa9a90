// HTTP calls of the dashboard. Same origin: the auth cookie set by `/?token=` rides along.

import { HttpError } from './net.js';

export async function call(method, path, body, { signal } = {}) {
  const init = { method, credentials: 'same-origin', cache: 'no-store', signal, headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw new HttpError(response.status, await response.text());
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, options) => call('GET', path, undefined, options);
export const post = (path, body, options) => call('POST', path, body, options);

export function sessionPath(session, tail = '') {
  return `/api/konsole/${encodeURIComponent(session)}${tail}`;
}

// Start a turn over HTTP. The turn's events reach the page through its one session subscription,
// so the POST is only the command: once the headers say the turn exists, its own SSE body is dropped.
export async function startTurn(session, message, lane = 'main') {
  const ctrl = new AbortController();
  const response = await fetch(sessionPath(session, lane === 'quick' ? '/quick' : '/stream'), {
    method: 'POST', credentials: 'same-origin', cache: 'no-store', signal: ctrl.signal,
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ message }),
  });
  if (!response.ok) throw new HttpError(response.status, await response.text());
  const turn = response.headers.get('x-agentwire-turn');
  ctrl.abort();
  return { turn };
}
