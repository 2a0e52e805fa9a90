// Runs AG-UI runs against agentwire with @ag-ui/client's own HttpAgent: its pipeline validates
// every event against the protocol's schemas and verifies their order (verifyEvents) before it
// builds messages and state. Prints what the client built as one JSON line: the last run's fields,
// and every run's under "runs".
//
//   node agui.mjs '{"url", "token", "threadId", "runId", "message" | "messages": [...], "state"?, "lastEventId"?}'
//
// Several messages are sent one run each, on one agent (runIds <runId>-1, -2, …), as a chat does.
// With lastEventId the request carries it as Last-Event-ID (agentwire's resume extension).
import { HttpAgent } from "@ag-ui/client";

const { url, token, threadId, runId, message, messages, state, lastEventId } = JSON.parse(process.argv[2]);
const agent = new HttpAgent({
  url: `${url}/api/agui`,
  headers: {
    ...(token ? { authorization: `Bearer ${token}` } : {}),
    ...(lastEventId ? { "last-event-id": lastEventId } : {}),
  },
  threadId,
  initialState: state ?? {},
});
const texts = messages ?? [message];
const runs = [];
for (const [index, text] of texts.entries()) {
  agent.addMessage({ id: `user-${index + 1}`, role: "user", content: text });
  const events = [];
  const custom = [];
  let outcome = null;
  let runError = null;
  try {
    const run = await agent.runAgent({ runId: messages ? `${runId}-${index + 1}` : runId }, {
      onEvent: ({ event }) => { events.push(event.type); },
      onRunFinishedEvent: (params) => { outcome = params.outcome; },
      onRunErrorEvent: ({ event }) => { runError = { message: event.message, code: event.code }; },
      onCustomEvent: ({ event }) => { custom.push({ name: event.name, value: event.value }); },
    });
    runs.push({ newMessages: run.newMessages, events, custom, outcome, runError });
  } catch (error) {
    runs.push({ error: String(error?.message ?? error), status: error?.status ?? null, events, runError });
    break;
  }
}
process.stdout.write(JSON.stringify({ ...runs.at(-1), state: agent.state, runs }) + "\n");
