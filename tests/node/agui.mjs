// Runs one AG-UI run against agentwire with @ag-ui/client's own HttpAgent: its pipeline validates
// every event against the protocol's schemas and verifies their order (verifyEvents) before it
// builds messages and state. Prints what the client built as one JSON line.
//
//   node agui.mjs '{"url", "token", "threadId", "runId", "message", "state"?, "lastEventId"?}'
//
// With lastEventId the request carries it as Last-Event-ID (agentwire's resume extension).
import { HttpAgent } from "@ag-ui/client";

const { url, token, threadId, runId, message, state, lastEventId } = JSON.parse(process.argv[2]);
const agent = new HttpAgent({
  url: `${url}/api/agui`,
  headers: {
    ...(token ? { authorization: `Bearer ${token}` } : {}),
    ...(lastEventId ? { "last-event-id": lastEventId } : {}),
  },
  threadId,
  initialMessages: [{ id: "user-1", role: "user", content: message }],
  initialState: state ?? {},
});
const events = [];
const custom = [];
let outcome = null;
let runError = null;
let result;
try {
  const run = await agent.runAgent({ runId }, {
    onEvent: ({ event }) => { events.push(event.type); },
    onRunFinishedEvent: (params) => { outcome = params.outcome; },
    onRunErrorEvent: ({ event }) => { runError = { message: event.message, code: event.code }; },
    onCustomEvent: ({ event }) => { custom.push({ name: event.name, value: event.value }); },
  });
  result = { newMessages: run.newMessages, state: agent.state, events, custom, outcome, runError };
} catch (error) {
  result = { error: String(error?.message ?? error), status: error?.status ?? null, events, runError };
}
process.stdout.write(JSON.stringify(result) + "\n");
