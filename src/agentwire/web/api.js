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

// Start a turn over HTTP: only the command. The turn's events reach the page through its one session
// subscription (from `first_seq`), so no second stream is opened for them.
export async function startTurn(session, message, lane = 'main') {
  return post(sessionPath(session, '/turns'), { message, lane });
}
