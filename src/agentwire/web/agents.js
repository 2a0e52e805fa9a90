// Agents: what the new-session form offers (`GET /api/agents`: the agents this server can run, with
// why not for the others) and the header's badge saying what a session's agent may do (its
// `agent.info`'s approval).

import * as api from './api.js';
import { clear, h } from './dom.js';

const APPROVAL = {
  'read-only': { label: 'read-only', title: 'The agent may read and search, but not change files or run tools that write.' },
  full: { label: 'full access', title: 'No sandbox and no questions: the agent may run any command and write any file.' },
};

// Fill the provider <select> with the available agents (the others disabled, their reason as a
// tooltip); returns the listing, so the form knows which agents take an approval.
export async function fillAgentChoices(select) {
  const body = await api.get('/api/agents');
  const current = select.value;
  clear(select).append(h('option', { value: '' }, `default (${body.default})`), ...body.agents.map((agent) => h('option', {
    value: agent.name, disabled: agent.available ? null : '', title: agent.reason || '',
  }, `${agent.label}${agent.version ? ` ${agent.version}` : ''}${agent.available ? '' : ' — not available'}`)));
  if ([...select.options].some((o) => o.value === current && !o.disabled)) select.value = current;
  return body;
}

export function takesApproval(listing, name) {
  const chosen = name || listing.default;
  return Boolean(listing.agents.find((agent) => agent.name === chosen && agent.approval));
}

// The header's approval badge, from the session's agent record ({} when none yet): what the agent may
// do, beside the agent line (`ConsoleView.agentLine`).
export function showApproval(badge, agent) {
  const approval = APPROVAL[agent.approval];
  badge.hidden = !approval;
  badge.textContent = approval ? approval.label : '';
  badge.title = approval ? approval.title : '';
  badge.dataset.approval = agent.approval || '';
}
