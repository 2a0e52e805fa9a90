// A tool-permission request as a card in the console: what the agent wants to do, in a form a person
// reads at a glance (the command for Bash, a diff for Edit, the new file for Write, JSON otherwise),
// and the three answers. Nothing the agent sent is ever parsed as HTML.

import { clear, fmtClock, h } from './dom.js';

// Keys that answer the oldest waiting request while no text field has the focus.
export const SHORTCUTS = {
  y: { decision: 'allow', remember: false },
  n: { decision: 'deny', remember: false },
  a: { decision: 'allow', remember: true },
};
const MAX_LINES = 400;

// "Always allow" says what it will allow: a tool, or (Bash) the command's prefix.
export function ruleText(rule) {
  if (!rule || !rule.tool) return '';
  return rule.prefix ? `${rule.tool} ${rule.prefix} …` : `every ${rule.tool}`;
}

export function inputView(input) {
  const value = input && typeof input === 'object' ? input : {};
  if (typeof value.command === 'string') {
    return h('div', { class: 'perm-input' },
      value.description ? h('div', { class: 'perm-note' }, String(value.description)) : null,
      h('pre', { class: 'code perm-command' }, `$ ${value.command}`));
  }
  if (typeof value.old_string === 'string' && typeof value.new_string === 'string') {
    return h('div', { class: 'perm-input' }, pathLine(value.file_path), diffView(value.old_string, value.new_string));
  }
  if (Array.isArray(value.edits)) {
    return h('div', { class: 'perm-input' }, pathLine(value.file_path),
      value.edits.map((edit) => diffView(String(edit?.old_string ?? ''), String(edit?.new_string ?? ''))));
  }
  if (typeof value.content === 'string') {
    return h('div', { class: 'perm-input' }, pathLine(value.file_path), diffView('', value.content));
  }
  return h('pre', { class: 'code perm-input' }, JSON.stringify(value, null, 2));
}

function pathLine(path) {
  return path ? h('div', { class: 'perm-path' }, String(path)) : null;
}

function lines(text) {
  const split = text.replace(/\n$/, '').split('\n');
  return text === '' ? [] : split;
}

// The lines taken out, then the lines put in: an edit's whole strings, as Claude Code shows them.
function diffView(before, after) {
  const rows = [...lines(before).map((line) => ['del', `- ${line}`]), ...lines(after).map((line) => ['add', `+ ${line}`])];
  const shown = rows.slice(0, MAX_LINES).map(([kind, line]) => h('span', { class: `diff-${kind}` }, line, '\n'));
  const more = rows.length > MAX_LINES ? h('span', { class: 'diff-more' }, `… ${rows.length - MAX_LINES} more lines`) : null;
  return h('pre', { class: 'code diff' }, shown, more);
}

function outcome(entry) {
  const by = entry.by;
  if (entry.status === 'allowed') {
    return entry.remember ? `Always allowed: ${ruleText(entry.rule)}` : by === 'rule' ? 'Allowed by an earlier answer' : 'Allowed';
  }
  if (entry.status === 'ended') return 'Not answered: the turn ended';
  if (by === 'timeout') return 'Denied: nobody answered in time';
  if (by === 'cancel') return 'Denied: the turn was cancelled';
  if (by === 'turn_end') return 'Denied: the turn ended';
  return 'Denied';
}

// `answer(decision, remember)` is called by the buttons; `busy`: an answer is on its way.
export function paintPermission(el, entry, { answer, busy }) {
  const pending = entry.status === 'pending';
  el.className = `permission permission-${entry.status}`;
  el.dataset.request = entry.request_id;
  el.setAttribute('role', 'group');
  el.setAttribute('aria-label', `Permission request: ${entry.tool}`);
  const icon = pending ? '⚠' : entry.status === 'allowed' ? '✓' : '✗';
  const head = h('div', { class: 'perm-head' },
    h('span', { class: 'perm-icon', 'aria-hidden': 'true' }, icon),
    h('span', { class: 'perm-label' }, pending ? 'Allow this?' : 'Permission'),
    h('span', { class: 'tool-name' }, entry.tool || 'tool'),
    entry.title ? h('span', { class: 'perm-title' }, entry.title) : null);
  let foot;
  if (pending) {
    const button = (label, key, kind, decision, remember) => h('button', {
      type: 'button', class: `button ${kind}`, 'data-decision': remember ? 'always' : decision, disabled: busy,
      'aria-keyshortcuts': key, onclick: () => answer(decision, remember),
    }, label, ' ', h('kbd', {}, key));
    foot = h('div', { class: 'perm-actions' },
      button('Allow', 'y', 'primary', 'allow', false),
      button('Deny', 'n', 'danger', 'deny', false),
      button(`Always allow ${ruleText(entry.rule)}`, 'a', '', 'allow', true),
      entry.expires_at ? h('span', { class: 'perm-expires' }, `denied at ${fmtClock(entry.expires_at)} without an answer`) : null);
  } else {
    foot = h('div', { class: 'perm-outcome' }, outcome(entry),
      entry.status === 'denied' && entry.by === 'user' && entry.message && !entry.message.startsWith('The user denied')
        ? h('span', { class: 'perm-message' }, ` — ${entry.message}`) : null);
  }
  clear(el).append(head, inputView(entry.input), foot);
}
